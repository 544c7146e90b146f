"""Does a model's text encoder see word order? Cosine of its pooled text embedding over caption pairs that differ
only in order (relation swapped, colours swapped, shapes swapped), against pairs that differ in a word's identity.

A bag-of-words encoder gives cosine 1.0000 to every order pair, whatever it learned; an encoder the UNet can bind
with must move them apart. The first model is the baseline; each later one prints its order-pair distance
(1 - cos) as a ratio to it, all in one process.

    python benchmarks/text_order.py condiff/weights/base32 runs/base32_cpu/model
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from condiff.pipelines.text2image import Text2ImagePipeline

ORDER_PAIRS = [  # same bag of words, different meaning
    ("a red circle to the left of a blue square", "a blue square to the left of a red circle"),
    ("a red circle to the left of a blue square", "a blue circle to the left of a red square"),
    ("a red circle to the left of a blue square", "a red square to the left of a blue circle"),
    ("a green triangle above a yellow circle", "a yellow circle above a green triangle"),
    ("a white square and an orange circle", "an orange square and a white circle"),
]
WORD_PAIRS = [  # one word differs
    ("a red circle to the left of a blue square", "a red circle to the right of a blue square"),
    ("a green triangle above a yellow circle", "a green triangle below a yellow circle"),
    ("a white square and an orange circle", "a white square and an orange triangle"),
]


@torch.no_grad()
def distances(pipe: Text2ImagePipeline, pairs) -> list[float]:
    a = pipe.encode([p[0] for p in pairs])["pooled"].float()
    b = pipe.encode([p[1] for p in pairs])["pooled"].float()
    return (1 - F.cosine_similarity(a, b, dim=-1)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    base = None
    for folder in args.models:
        pipe = Text2ImagePipeline.from_pretrained(folder)
        order, word = distances(pipe, ORDER_PAIRS), distances(pipe, WORD_PAIRS)
        mean_order = sum(order) / len(order)
        base = base or max(mean_order, 1e-12)
        mean_word = sum(word) / len(word)
        print(f"{folder}: 1-cos order pairs mean {mean_order:.2e} (min {min(order):.2e}), one-word pairs mean "
              f"{mean_word:.2e}, order/one-word {mean_order / mean_word:.3f}; order distance x{mean_order / base:.0f} "
              f"vs {args.models[0]}")
        for (p, q), d in zip(ORDER_PAIRS, order):
            print(f"    {d:.2e}  '{p}' / '{q}'")


if __name__ == "__main__":
    main()
