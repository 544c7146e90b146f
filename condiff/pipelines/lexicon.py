"""Colour words a model never saw, read as the nearest colour it knows.

A model's captions name a few colours; people name hundreds (`scarlet`, `aqua`, `lilac`). The frozen text encoder
does not place such words near their hue: benchmarks/encoder_synonyms.py finds 1 of the 8 held-out colour words of
world/language.py nearest its own grammar colour, so a model cannot learn to read them from a few synonyms. But a
colour name has a meaning outside the encoder that can be looked up: the one-word names of the xkcd colour survey
(CC0) and of CSS (colour_names/LICENSE.md), each an sRGB colour.

read_colours replaces each word of a prompt that the model's vocabulary lacks, that names a colour and that
modifies the word after it (`a scarlet circle`; not `a circle in the sky`), by the model's own basic colour word
nearest in CIELAB. The distance is CIE94 with its textile weights (lightness counts half), so a dark or a light
shade keeps its hue's name (navy: blue; lemon: yellow). A word ending in -y or -ish is looked up by its stem too
(`snowy`: snow). A model that records no vocabulary (Stable Diffusion) is read literally. Each replacement is
reported, so the command line and the API can say what was read.
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

# Berlin and Kay's eleven basic colour terms, `gray`, and the two printers' primaries the shapes world uses
BASIC_COLOURS = frozenset("black white red green yellow blue brown purple pink orange grey gray cyan magenta".split())
K_L = 2.0  # CIE94's lightness weight for textiles (graphic arts: 1)
SRGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375), (0.2126729, 0.7151522, 0.0721750), (0.0193339, 0.1191920, 0.9503041))
WORD = re.compile(r"[A-Za-z]+")
ARTICLE = re.compile(r"\b(a|an|A|An)(\s+)$")  # an article right before a replaced word follows its new sound


@lru_cache(maxsize=1)
def colour_names() -> dict[str, str]:
    """name -> '#rrggbb': the xkcd survey's one-word names, then CSS's for names the survey lacks."""
    lists = json.loads((Path(__file__).parent / "colour_names" / "names.json").read_text())
    return lists["css"] | lists["xkcd"]


def srgb_to_lab(hex_colour: str) -> tuple[float, float, float]:
    """CIELAB (D65) of an sRGB colour '#rrggbb'."""
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in rgb]
    xyz = [sum(m * c for m, c in zip(row, lin)) / white for row, white in zip(
        SRGB_TO_XYZ, (0.95047, 1.0, 1.08883))]
    f = [t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29 for t in xyz]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def delta_e94(reference: tuple[float, float, float], sample: tuple[float, float, float]) -> float:
    """CIE94 colour difference of sample from reference (textile weights: k_L = 2, K1 = 0.048, K2 = 0.014)."""
    (l1, a1, b1), (l2, a2, b2) = reference, sample
    c1, c2 = math.hypot(a1, b1), math.hypot(a2, b2)
    dh2 = max((a1 - a2) ** 2 + (b1 - b2) ** 2 - (c1 - c2) ** 2, 0.0)
    return math.sqrt(((l1 - l2) / K_L) ** 2 + ((c1 - c2) / (1 + 0.048 * c1)) ** 2 + dh2 / (1 + 0.014 * c1) ** 2)


def colour_of(word: str) -> str | None:
    """The colour a word names ('#rrggbb'), by itself or by its stem without -y or -ish (`snowy`, `reddish`)."""
    names, w = colour_names(), word.lower()
    stems = [w]
    for suffix in ("y", "ish"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            stem = w[:-len(suffix)]
            stems += [stem, stem + "e"] + ([stem[:-1]] if stem[-1] == stem[-2] else [])
    return next((names[s] for s in stems if s in names), None)


def palette(vocabulary: list[str]) -> dict[str, tuple[float, float, float]]:
    """The model's basic colour words, each with its CIELAB colour."""
    names = colour_names()
    return {w: srgb_to_lab(names[w]) for w in sorted(set(vocabulary) & BASIC_COLOURS) if w in names}


def _article_before(word: str, text: str) -> str:
    """text, whose last word is `a` or `an` before `word`, with the article that fits word's first sound."""
    m = ARTICLE.search(text)
    if m is None:
        return text
    new = "an" if word[0] in "aeiou" else "a"
    return text[:m.start()] + (new.capitalize() if m.group(1)[0].isupper() else new) + m.group(2)


def read_colours(prompt: str, vocabulary: list[str] | None) -> tuple[str, list[tuple[str, str]]]:
    """prompt with each unknown colour word that modifies the next word replaced by the model's nearest basic colour
    word, and the (word, read as) pairs; unchanged when the model records no vocabulary or names no basic colour."""
    if not vocabulary:
        return prompt, []
    known, colours = set(vocabulary), palette(vocabulary)
    if not colours:
        return prompt, []
    matches = list(WORD.finditer(prompt))
    out, read, at = [], [], 0
    for m, nxt in zip(matches, matches[1:]):
        word = m.group().lower()
        if word in known or prompt[m.end():nxt.start()].strip():  # known, or the next word is past punctuation
            continue
        colour = colour_of(word)
        if colour is None:
            continue
        lab = srgb_to_lab(colour)
        name = min(colours, key=lambda c: delta_e94(colours[c], lab))
        before = _article_before(name, prompt[at:m.start()])
        out += [before, name]
        read.append((m.group(), name))
        at = m.end()
    return "".join(out) + prompt[at:], read


def read_note(read: list[tuple[str, str]]) -> str | None:
    """'note: read ...' naming each replacement, or None when there was none."""
    if not read:
        return None
    return "note: read " + ", ".join(f"'{w}' as '{c}'" for w, c in dict.fromkeys(read)) + " (colour_names)"


__all__ = ["BASIC_COLOURS", "colour_names", "colour_of", "delta_e94", "palette", "read_colours", "read_note",
           "srgb_to_lab"]
