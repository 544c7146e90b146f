"""What the frozen text encoder itself says a held-out synonym means, before any diffusion model reads it.

A model trained on paraphrases can only carry a word it never saw through the encoder's sense of it. This reads the
encoder's contextual state of each held-out colour and shape word (in `a WORD circle` and `a red WORD`, the mean
over the word's WordPiece tokens) and names its nearest labelled neighbour (cosine) among:

- the grammar words alone (`red`, `circle`, ...);
- the grammar words and training list 1 (one synonym a word, world/language.py);
- the grammar words and training list 2 (several synonyms a word).

Each row prints how many held-out words the nearest neighbour labels right, and list 2's count against list 1's as a
ratio. It runs in seconds on a CPU and needs nothing but the packaged encoder.

`--substitution` also tries the encoder at what it was trained for, sentence similarity: each word of a few prompts
is replaced by every content word of the default model's vocabulary, and the replacement whose sentence embedding
stays nearest the prompt's is printed with that cosine. A synonym should be replaced by its grammar word with a
high cosine, and a word with no grammar counterpart (`picture`, `you`) should not be replaced at all.

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


SUBSTITUTIONS = {  # prompt, word -> the grammar word it means (None: none; the word should stay unreplaced)
    "synonyms": [("a red disc", "disc", "circle"), ("a red box", "box", "square"), ("a red pyramid", "pyramid",
                 "triangle"), ("a white dot", "dot", "circle"), ("a yellow block", "block", "square"),
                 ("a blue wedge", "wedge", "triangle"), ("a tiny red circle", "tiny", "small"),
                 ("a huge red circle", "huge", "large"), ("a red circle beneath a blue square", "beneath", "below"),
                 ("a red circle higher than a blue square", "higher", "above")],
    "no counterpart": [("a picture of a red circle", "picture", None), ("there is a red circle", "there", None),
                       ("a red circle plus a blue square", "plus", None), ("you can see a red circle", "you", None),
                       ("an image showing a red circle", "image", None), ("a red circle higher than a blue square",
                                                                          "than", None)],
}


@torch.no_grad()
def substitution(enc: PretrainedTextEncoder, prompt: str, word: str, candidates: list[str]) -> tuple[str, float]:
    """The candidate whose replacing `word` keeps the sentence embedding nearest the prompt's, and that cosine."""
    words = prompt.split()
    i = words.index(word)
    texts = [prompt] + [" ".join(words[:i] + [c] + words[i + 1:]) for c in candidates]
    e = torch.nn.functional.normalize(enc.encode(texts)["pooled"], dim=-1)
    sims = e[1:] @ e[0]
    return candidates[int(sims.argmax())], float(sims.max())


def substitutions(enc: PretrainedTextEncoder) -> dict:
    from condiff.catalogue import DEFAULT_MODEL
    from condiff.pipelines.vocabulary import FUNCTION_WORDS

    vocabulary = json.loads((DEFAULT_MODEL / "pipeline.json").read_text())["vocabulary"]
    candidates = [w for w in vocabulary if w not in FUNCTION_WORDS]
    out = {}
    for group, cases in SUBSTITUTIONS.items():
        out[group] = []
        for prompt, word, meant in cases:
            got, cos = substitution(enc, prompt, word, candidates)
            out[group].append({"prompt": prompt, "word": word, "means": meant, "nearest": got, "cosine": round(cos, 3)})
            print(f"{group:14s} {word:8s} -> {got:9s} cosine {cos:.3f} (means {meant})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--substitution", action="store_true", help="also the sentence-similarity substitution probe")
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
    if args.substitution:
        report["substitution"] = substitutions(enc)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
