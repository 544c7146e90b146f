"""What the frozen text encoder itself says a held-out synonym means, before any diffusion model reads it.

A model trained on paraphrases can only carry a word it never saw through the encoder's sense of it. This reads the
encoder's contextual state of each held-out colour and shape word (in `a WORD circle` and `a red WORD`, the mean
over the word's WordPiece tokens) and names its nearest labelled neighbour (cosine) among:

- the grammar words alone (`red`, `circle`, ...);
- the grammar words and training list 1 (one synonym a word, world/language.py);
- the grammar words and training list 2 (several synonyms a word).

Each row prints how many held-out words the nearest neighbour labels right, and list 2's count against list 1's as a
ratio. It runs in seconds on a CPU and needs nothing but the packaged encoder.

    python benchmarks/encoder_synonyms.py --out docs/language/encoder_synonyms.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from condiff.nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder
from condiff.world.language import COLOUR_SYNONYMS, MORE_COLOURS, MORE_SHAPES, SHAPE_SYNONYMS

CONTEXT = {"colour": ("a {} circle", 2), "shape": ("a red {}", 3)}  # template, index of the word's first token


@torch.no_grad()
def word_state(enc: PretrainedTextEncoder, word: str, kind: str) -> torch.Tensor:
    """The encoder's contextual state of `word` (D,): the mean over its tokens, inside the kind's template."""
    template, first = CONTEXT[kind]
    n = len(enc.tokenizer.tok.encode(word, add_special_tokens=False).ids)
    h = enc.encode([template.format(word)])["context"][0]
    return h[first - 1:first - 1 + n].mean(0)


def nearest(enc, kind: str, queries: dict[str, str], labelled: dict[str, str]) -> dict[str, str]:
    """Each query word's label by its nearest labelled word (cosine)."""
    names = list(labelled)
    keys = torch.nn.functional.normalize(torch.stack([word_state(enc, w, kind) for w in names]), dim=-1)
    out = {}
    for q in queries:
        sims = keys @ torch.nn.functional.normalize(word_state(enc, q, kind), dim=-1)
        out[q] = labelled[names[int(sims.argmax())]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    enc = PretrainedTextEncoder(PretrainedTextConfig())
    report = {}
    for kind, table, more in (("colour", COLOUR_SYNONYMS, MORE_COLOURS), ("shape", SHAPE_SYNONYMS, MORE_SHAPES)):
        held_out = {syn[1]: g for g, syn in table.items()}
        lists = {"grammar": {g: g for g in table},
                 "list 1": {g: g for g in table} | {syn[0]: g for g, syn in table.items()},
                 "list 2": {g: g for g in table} | {syn[0]: g for g, syn in table.items()}
                 | {w: g for g, ws in more.items() for w in ws}}
        report[kind] = {}
        for name, labelled in lists.items():
            got = nearest(enc, kind, held_out, labelled)
            right = sum(got[q] == g for q, g in held_out.items())
            report[kind][name] = {"right": right, "of": len(held_out), "labels": got}
            print(f"{kind:6s} {name:8s} {right}/{len(held_out)} held-out words nearest their own grammar word: "
                  + ", ".join(f"{q}->{got[q]}" for q in held_out))
        r1, r2 = report[kind]["list 1"]["right"], report[kind]["list 2"]["right"]
        print(f"{kind}: list 2 / list 1 = {r2 / max(r1, 1):.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
