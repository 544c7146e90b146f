"""Language beyond the grammar: a shapes-world scene said another way, with its meaning kept exact.

A paraphrase is made from a PromptSpec, so the grammar caption it stands for (its meaning) is known and the oracle
judges an image against that spec, whatever the words. Every sentence form, relation phrasing and synonym below is in
one of two lists (docs/language.md):

- TRAIN: what a model may be trained on (`data.paraphrase` in a training config);
- HELD_OUT: never in training; the language suite's held-out half measures what the frozen encoder carries over.

A paraphrase also gives each object's phrase as the exact text of the caption that names it ("a crimson disc",
"navy boxes" for counted objects), which is what the layout prior learns to point at and the grounded UNet reads.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .grammar import NUMBERS, Category, ObjectSpec, PromptSpec, Relation, article, sample_prompt

SPLITS = ("train", "held_out")

# grammar word -> (its training synonym, its held-out synonym)
COLOUR_SYNONYMS = {"red": ("crimson", "scarlet"), "green": ("lime", "emerald"), "blue": ("navy", "azure"),
                   "yellow": ("golden", "lemon"), "purple": ("violet", "lilac"), "orange": ("amber", "tangerine"),
                   "cyan": ("turquoise", "aqua"), "white": ("ivory", "snowy")}
SHAPE_SYNONYMS = {"circle": ("disc", "dot"), "square": ("box", "block"), "triangle": ("pyramid", "wedge")}
SIZE_SYNONYMS = {"small": ("little", "tiny"), "large": ("big", "huge")}
NUMBER_SYNONYMS = {"two": ("2", "a pair of"), "three": ("3", "a trio of"), "four": ("4", "a quartet of")}
RELATION_PHRASES = {  # relation -> (training phrasings, held-out phrasings)
    Relation.LEFT_OF: (("left of", "on the left of"), ("on the left side of",)),
    Relation.RIGHT_OF: (("right of", "on the right of"), ("on the right side of",)),
    Relation.ABOVE: (("over", "on top of"), ("higher than",)),
    Relation.BELOW: (("under", "beneath"), ("lower than",)),
}
FORMS = {  # category -> (training sentence forms, held-out forms); {a}, {b}: object phrases, {r}: the relation
    Category.SINGLE: (("there is {a}", "a picture of {a}"), ("an image showing {a}",)),
    Category.COUNTING: (("there are {n} {p}",), ("{n} {p} on a dark background",)),
    Category.TWO_OBJECTS: (("{a} with {b}", "there is {a} and {b}"), ("{a} along with {b}",)),
    Category.POSITION: (("{a} is placed {r} {b}", "there is {a} {r} {b}"), ("you can see {a} {r} {b}",)),
}
GRAMMAR_FORMS = {Category.SINGLE: "{a}", Category.COUNTING: "{n} {p}", Category.TWO_OBJECTS: "{a} and {b}",
                 Category.POSITION: "{a} {r} {b}"}
SYNONYM_P = 0.5  # each replaceable word is said by its split's synonym with this probability


@dataclass(frozen=True)
class Paraphrase:
    caption: str
    spec: PromptSpec  # what it means: the grammar caption is spec.caption
    phrases: tuple[str, ...]  # each object's phrase, as the caption's own text, in spec.objects' order


def plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("x", "s", "ch", "sh")) else noun + "s"


def _word(word: str, table: dict, split: str, rng: random.Random) -> str:
    """The grammar word, or with probability SYNONYM_P its synonym from the split's list."""
    return table[word][SPLITS.index(split)] if rng.random() < SYNONYM_P else word


def _object_words(o: ObjectSpec, split: str, rng: random.Random) -> list[str]:
    size = [_word(o.size, SIZE_SYNONYMS, split, rng)] if o.size else []
    return size + [_word(o.colour, COLOUR_SYNONYMS, split, rng), _word(o.shape, SHAPE_SYNONYMS, split, rng)]


def _phrase(o: ObjectSpec, split: str, rng: random.Random) -> str:
    words = _object_words(o, split, rng)
    return f"{article(words[0])} {' '.join(words)}"


def paraphrase(spec: PromptSpec, rng: random.Random, split: str = "train", grammar_form: bool = True) -> Paraphrase:
    """spec said with the split's forms, phrasings and synonyms (train: the grammar's own form is one of the choices
    unless grammar_form=False; held_out: a held-out form always)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    i = SPLITS.index(split)
    forms = FORMS[spec.category][i] + ((GRAMMAR_FORMS[spec.category],) if split == "train" and grammar_form else ())
    form = rng.choice(forms)
    if spec.category is Category.COUNTING:
        o = spec.objects[0]
        number = {v: k for k, v in NUMBERS.items()}[len(spec.objects)]
        colour, shape = _object_words(o, split, rng)
        p = f"{colour} {plural(shape)}"
        n = _word(number, NUMBER_SYNONYMS, split, rng)
        return Paraphrase(form.format(n=n, p=p), spec, (p,) * len(spec.objects))
    phrases = tuple(_phrase(o, split, rng) for o in spec.objects)
    r = ""
    if spec.relation is not None:
        choices = RELATION_PHRASES[spec.relation][i] + ((spec.relation.value,) if split == "train" else ())
        r = rng.choice(choices) if rng.random() < SYNONYM_P or split == "held_out" else spec.relation.value
    caption = form.format(a=phrases[0], b=phrases[-1], r=r)
    return Paraphrase(caption, spec, phrases)


def language_suite(split: str, n: int) -> list[Paraphrase]:
    """n distinct paraphrases cycling through the four categories, none equal to its grammar caption; the same n
    always gives the same list (prefixes are stable). Its seeds are the suite's own, apart from shapes-bench's."""
    rng = random.Random(f"shapes-bench/v1/language/{split}")
    out: list[Paraphrase] = []
    categories = list(Category)
    while len(out) < n:
        spec = sample_prompt(rng, categories[len(out) % len(categories)])
        p = paraphrase(spec, rng, split, grammar_form=False)
        if p.caption != spec.caption and p.caption not in (q.caption for q in out):
            out.append(p)
    return out


def training_words() -> list[str]:
    """Every word a paraphrase of the training split can use, beyond the grammar's."""
    words = {w for table in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, SIZE_SYNONYMS, NUMBER_SYNONYMS)
             for syn in table.values() for w in syn[0].split()}
    words |= {plural(s[0]) for s in SHAPE_SYNONYMS.values()}
    words |= {w for phr in RELATION_PHRASES.values() for p in phr[0] for w in p.split()}
    words |= {w for forms in FORMS.values() for f in forms[0] for w in f.split() if not w.startswith("{")}
    return sorted(words)


__all__ = ["COLOUR_SYNONYMS", "FORMS", "NUMBER_SYNONYMS", "Paraphrase", "RELATION_PHRASES", "SHAPE_SYNONYMS",
           "SIZE_SYNONYMS", "SPLITS", "language_suite", "paraphrase", "plural", "training_words"]
