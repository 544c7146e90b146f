"""Language beyond the grammar: a shapes-world scene said another way, with its meaning kept exact.

A paraphrase is made from a PromptSpec, so the grammar caption it stands for (its meaning) is known and the oracle
judges an image against that spec, whatever the words. Every sentence form, relation phrasing and synonym below is in
one of two lists (docs/language.md):

- TRAIN: what a model may be trained on (`data.paraphrase` in a training config). It has two versions
  (`data.paraphrase_list`): list 1 gives each word one synonym, list 2 adds several more of each kind (MORE_*), so
  that a model must read a word through the encoder's sense of it rather than learn one token. The language suite's
  training half always draws from list 1, so its figures compare across versions;
- HELD_OUT: never in training, in either version; the language suite's held-out half measures what the frozen
  encoder carries over.

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
# Training list 2: list 1's choices plus these (a thesaurus's common synonyms; none is a held-out word or shares one)
MORE_COLOURS = {"red": ("ruby", "cherry", "vermilion"), "green": ("jade", "mint", "grassy"),
                "blue": ("cobalt", "sapphire", "ultramarine"), "yellow": ("canary", "mustard", "sunflower"),
                "purple": ("plum", "lavender", "amethyst"), "orange": ("apricot", "pumpkin", "marigold"),
                "cyan": ("teal", "peacock"), "white": ("pearl", "cream", "milky", "alabaster")}
MORE_SHAPES = {"circle": ("ball", "orb", "sphere"), "square": ("cube", "tile"), "triangle": ("cone", "spike")}
MORE_SIZES = {"small": ("mini", "petite", "miniature"), "large": ("giant", "massive", "enormous")}
MORE_NUMBERS = {"two": ("a couple of", "twin"), "three": ("a group of three",), "four": ("a group of four",)}
MORE_RELATIONS = {Relation.LEFT_OF: ("at the left of", "west of"), Relation.RIGHT_OF: ("at the right of", "east of"),
                  Relation.ABOVE: ("atop", "north of"), Relation.BELOW: ("underneath", "south of")}
MORE_FORMS = {Category.SINGLE: ("a photo of {a}", "a drawing of {a}", "{a} alone"),
              Category.COUNTING: ("a picture of {n} {p}", "exactly {n} {p}"),
              Category.TWO_OBJECTS: ("{a} plus {b}", "both {a} and {b}", "{a} together with {b}"),
              Category.POSITION: ("{a} sits {r} {b}", "{a} is located {r} {b}", "a picture of {a} {r} {b}")}
TRAINING_LISTS = (1, 2)
SYNONYM_P = 0.5  # each replaceable word is said by its split's synonym with this probability


@dataclass(frozen=True)
class Paraphrase:
    caption: str
    spec: PromptSpec  # what it means: the grammar caption is spec.caption
    phrases: tuple[str, ...]  # each object's phrase, as the caption's own text, in spec.objects' order


def plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("x", "s", "ch", "sh")) else noun + "s"


def _word(word: str, table: dict, more: dict, split: str, rng: random.Random, version: int) -> str:
    """The grammar word, or with probability SYNONYM_P a synonym from the split's list: table's (list 1, held-out),
    or on training list 2 one of table's list-1 synonym and more's (list 1 has one a word, and draws no choice, so
    its stream is what it always was)."""
    if rng.random() >= SYNONYM_P:
        return word
    if split == "held_out" or version == 1:
        return table[word][SPLITS.index(split)]
    return rng.choice((table[word][0],) + more[word])


def _object_words(o: ObjectSpec, split: str, rng: random.Random, version: int) -> list[str]:
    size = [_word(o.size, SIZE_SYNONYMS, MORE_SIZES, split, rng, version)] if o.size else []
    return size + [_word(o.colour, COLOUR_SYNONYMS, MORE_COLOURS, split, rng, version),
                   _word(o.shape, SHAPE_SYNONYMS, MORE_SHAPES, split, rng, version)]


def _phrase(o: ObjectSpec, split: str, rng: random.Random, version: int) -> str:
    words = _object_words(o, split, rng, version)
    return f"{article(words[0])} {' '.join(words)}"


def _check(split: str, version: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    if version not in TRAINING_LISTS:
        raise ValueError(f"unknown training list {version} (known: {', '.join(map(str, TRAINING_LISTS))})")


def paraphrase(spec: PromptSpec, rng: random.Random, split: str = "train", grammar_form: bool = True,
               version: int = 1) -> Paraphrase:
    """spec said with the split's forms, phrasings and synonyms (train: from training list `version`, and the
    grammar's own form is one of the choices unless grammar_form=False; held_out: a held-out form always)."""
    _check(split, version)
    i = SPLITS.index(split)
    more = split == "train" and version == 2
    forms = (FORMS[spec.category][i] + (MORE_FORMS[spec.category] if more else ())
             + ((GRAMMAR_FORMS[spec.category],) if split == "train" and grammar_form else ()))
    form = rng.choice(forms)
    if spec.category is Category.COUNTING:
        o = spec.objects[0]
        number = {v: k for k, v in NUMBERS.items()}[len(spec.objects)]
        colour, shape = _object_words(o, split, rng, version)
        p = f"{colour} {plural(shape)}"
        n = _word(number, NUMBER_SYNONYMS, MORE_NUMBERS, split, rng, version)
        return Paraphrase(form.format(n=n, p=p), spec, (p,) * len(spec.objects))
    phrases = tuple(_phrase(o, split, rng, version) for o in spec.objects)
    r = ""
    if spec.relation is not None:
        choices = (RELATION_PHRASES[spec.relation][i] + (MORE_RELATIONS[spec.relation] if more else ())
                   + ((spec.relation.value,) if split == "train" else ()))
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


def training_words(version: int = 1) -> list[str]:
    """Every word a paraphrase of training list `version` can use, beyond the grammar's."""
    _check("train", version)
    said = {syn[0] for table in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, SIZE_SYNONYMS, NUMBER_SYNONYMS)
            for syn in table.values()}
    shapes = {syn[0] for syn in SHAPE_SYNONYMS.values()}
    relations = {p for phr in RELATION_PHRASES.values() for p in phr[0]}
    forms = {f for fs in FORMS.values() for f in fs[0]}
    if version == 2:
        said |= {w for more in (MORE_COLOURS, MORE_SHAPES, MORE_SIZES, MORE_NUMBERS)
                 for ws in more.values() for w in ws}
        shapes |= {w for ws in MORE_SHAPES.values() for w in ws}
        relations |= {p for more in MORE_RELATIONS.values() for p in more}
        forms |= {f for fs in MORE_FORMS.values() for f in fs}
    words = {w for phrase in said | relations for w in phrase.split()} | {plural(s) for s in shapes}
    words |= {w for f in forms for w in f.split() if not w.startswith("{")}
    return sorted(words)


__all__ = ["COLOUR_SYNONYMS", "FORMS", "MORE_COLOURS", "MORE_FORMS", "MORE_NUMBERS", "MORE_RELATIONS", "MORE_SHAPES",
           "MORE_SIZES", "NUMBER_SYNONYMS", "Paraphrase", "RELATION_PHRASES", "SHAPE_SYNONYMS",
           "SIZE_SYNONYMS", "SPLITS", "TRAINING_LISTS", "language_suite", "paraphrase", "plural", "training_words"]
