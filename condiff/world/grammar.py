"""Caption grammar of the shapes world (WORLD.md v1): captions <-> prompt specs."""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass

BACKGROUND = (20, 20, 24)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 190),
    "orange": (240, 130, 30),
    "cyan": (40, 200, 210),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.40}
NUMBERS = {"two": 2, "three": 3, "four": 4}
HELD_OUT = frozenset({("purple", "triangle"), ("orange", "square"), ("cyan", "circle")})


class Category(str, enum.Enum):
    SINGLE = "single"
    COUNTING = "counting"
    TWO_OBJECTS = "two_objects"
    POSITION = "position"


class Relation(str, enum.Enum):
    LEFT_OF = "to the left of"
    RIGHT_OF = "to the right of"
    ABOVE = "above"
    BELOW = "below"


VOCABULARY = tuple(
    sorted(
        {"a", "an", "and", "to", "the", "left", "right", "of", "above", "below"}
        | set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES} | set(SIZES) | set(NUMBERS)
    )
)


class PromptError(ValueError):
    """A caption that the shapes-world grammar does not accept."""


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str | None = None  # "small", "large" or None (random)

    def phrase(self) -> str:
        words = ([self.size] if self.size else []) + [self.colour, self.shape]
        return f"{article(words[0])} {' '.join(words)}"


@dataclass(frozen=True)
class PromptSpec:
    """What a caption asks for: objects, and for position prompts a relation objects[0] -> objects[1]."""

    category: Category
    objects: tuple[ObjectSpec, ...]
    relation: Relation | None = None

    @property
    def caption(self) -> str:
        return format_caption(self)

    def uses_held_out(self) -> bool:
        return any((o.colour, o.shape) in HELD_OUT for o in self.objects)


def article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def format_caption(spec: PromptSpec) -> str:
    o = spec.objects
    if spec.category is Category.COUNTING:
        number = {v: k for k, v in NUMBERS.items()}[len(o)]
        return f"{number} {o[0].colour} {o[0].shape}s"
    if spec.category is Category.SINGLE:
        return o[0].phrase()
    if spec.category is Category.TWO_OBJECTS:
        return f"{o[0].phrase()} and {o[1].phrase()}"
    return f"{o[0].phrase()} {spec.relation.value} {o[1].phrase()}"


class _Words:
    def __init__(self, caption: str):
        self.caption = caption
        self.words = caption.strip().lower().split()
        self.i = 0
        for w in self.words:
            if w not in VOCABULARY:
                raise PromptError(f"unknown word '{w}' in prompt '{_shown(caption)}'")

    def peek(self) -> str | None:
        return self.words[self.i] if self.i < len(self.words) else None

    def take(self, allowed, what: str) -> str:
        w = self.peek()
        if w is None or w not in allowed:
            found = f"'{w}'" if w else "the end"
            raise PromptError(f"expected {what} but found {found} in prompt '{_shown(self.caption)}'")
        self.i += 1
        return w


def _object(words: _Words, plural: bool = False) -> ObjectSpec:
    size = None
    if not plural:
        words.take(("a", "an"), "'a' or 'an'")
        if words.peek() in SIZES:
            size = words.take(SIZES, "a size")
    colour = words.take(COLOURS, "a colour")
    shapes = tuple(s + "s" for s in SHAPES) if plural else SHAPES
    shape = words.take(shapes, "a plural shape" if plural else "a shape")
    return ObjectSpec(shape.rstrip("s") if plural else shape, colour, size)


def _relation(words: _Words) -> Relation | None:
    w = words.peek()
    if w in ("above", "below"):
        words.take((w,), w)
        return Relation(w)
    if w == "to":
        for expected in ("to", "the"):
            words.take((expected,), f"'{expected}'")
        side = words.take(("left", "right"), "'left' or 'right'")
        words.take(("of",), "'of'")
        return Relation(f"to the {side} of")
    return None


def _shown(caption: str, limit: int = 120) -> str:
    """A prompt as an error message quotes it: on one line, at most `limit` characters."""
    text = " ".join(caption.split())
    return text if len(text) <= limit else text[:limit] + "..."


def parse_caption(caption: str) -> PromptSpec:
    """Parse a caption of any WORLD.md template; raises PromptError naming the offending word."""
    words = _Words(caption)
    if not words.words:
        raise PromptError("empty prompt")
    if words.peek() in NUMBERS:
        n = NUMBERS[words.take(NUMBERS, "a number")]
        obj = _object(words, plural=True)
        spec = PromptSpec(Category.COUNTING, (obj,) * n)
    else:
        first = _object(words)
        if words.peek() == "and":
            words.take(("and",), "'and'")
            spec = PromptSpec(Category.TWO_OBJECTS, (first, _object(words)))
        elif (relation := _relation(words)) is not None:
            spec = PromptSpec(Category.POSITION, (first, _object(words)), relation)
        else:
            spec = PromptSpec(Category.SINGLE, (first,))
    if words.peek() is not None:
        raise PromptError(f"unexpected word '{words.peek()}' in prompt '{_shown(caption)}'")
    return spec


def _random_object(rng: random.Random, sized: bool, exclude_held_out: bool) -> ObjectSpec:
    while True:
        colour, shape = rng.choice(tuple(COLOURS)), rng.choice(SHAPES)
        if not (exclude_held_out and (colour, shape) in HELD_OUT):
            size = rng.choice(tuple(SIZES)) if sized and rng.random() < 0.5 else None
            return ObjectSpec(shape, colour, size)


def sample_prompt(rng: random.Random, category: Category, exclude_held_out: bool = True) -> PromptSpec:
    """Draw a random prompt of one category; held-out (colour, shape) pairs excluded unless asked."""
    if category is Category.SINGLE:
        return PromptSpec(category, (_random_object(rng, True, exclude_held_out),))
    if category is Category.COUNTING:
        obj = _random_object(rng, False, exclude_held_out)
        return PromptSpec(category, (obj,) * rng.choice(tuple(NUMBERS.values())))
    a = _random_object(rng, False, exclude_held_out)
    b = _random_object(rng, False, exclude_held_out)
    while b == a:
        b = _random_object(rng, False, exclude_held_out)
    relation = rng.choice(tuple(Relation)) if category is Category.POSITION else None
    return PromptSpec(category, (a, b), relation)
