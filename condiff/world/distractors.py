"""Hard negative captions for a world caption: the same words, bound or related differently.

Used by contrastive CLIP guidance (softmax over the target and its distractors) and CLIP's retrieval test.
"""
from __future__ import annotations

from dataclasses import replace

from .grammar import COLOURS, NUMBERS, SHAPES, Category, ObjectSpec, PromptSpec, Relation, parse_caption

REVERSE = {Relation.LEFT_OF: Relation.RIGHT_OF, Relation.RIGHT_OF: Relation.LEFT_OF,
           Relation.ABOVE: Relation.BELOW, Relation.BELOW: Relation.ABOVE}


def _swap_colours(a: ObjectSpec, b: ObjectSpec) -> tuple[ObjectSpec, ObjectSpec]:
    return replace(a, colour=b.colour), replace(b, colour=a.colour)


def distractor_specs(spec: PromptSpec) -> list[PromptSpec]:
    """Captions a model that misreads binding, relation, count, colour or shape would satisfy instead."""
    out: list[PromptSpec] = []
    if spec.category is Category.POSITION:
        a, b = spec.objects
        out.append(replace(spec, relation=REVERSE[spec.relation]))  # relation flipped
        out.append(replace(spec, objects=(b, a)))  # the same relation, objects exchanged
        if a.colour != b.colour:
            out.append(replace(spec, objects=_swap_colours(a, b)))  # attributes bound the other way
    elif spec.category is Category.TWO_OBJECTS:
        a, b = spec.objects
        if a.colour != b.colour and a.shape != b.shape:
            out.append(replace(spec, objects=_swap_colours(a, b)))
        out.append(replace(spec, objects=(replace(a, colour=b.colour), b)))
        out.append(replace(spec, objects=(a, replace(b, shape=a.shape))))
    elif spec.category is Category.COUNTING:
        n, o = len(spec.objects), spec.objects[0]
        out += [replace(spec, objects=(o,) * m) for m in sorted(NUMBERS.values()) if m != n]
    else:
        o = spec.objects[0]
        out += [replace(spec, objects=(replace(o, colour=c),)) for c in COLOURS if c != o.colour][:3]
        out += [replace(spec, objects=(replace(o, shape=s),)) for s in SHAPES if s != o.shape]
    seen, unique = {spec.caption}, []
    for d in out:
        if d.caption not in seen:
            seen.add(d.caption)
            unique.append(d)
    return unique


def distractor_captions(caption: str) -> list[str]:
    return [d.caption for d in distractor_specs(parse_caption(caption))]
