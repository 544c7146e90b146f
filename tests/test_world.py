import random

import numpy as np
import pytest
import torch

from condiff.data.world import WorldStream
from condiff.world.grammar import (BACKGROUND, COLOURS, HELD_OUT, Category, ObjectSpec, PromptError, PromptSpec,
                                   Relation, parse_caption, sample_prompt)
from condiff.world.render import GAP, MARGIN, layout, render, to_uint8

EXAMPLES = {
    "a small red circle": Category.SINGLE,
    "three blue squares": Category.COUNTING,
    "a green triangle and a white circle": Category.TWO_OBJECTS,
    "a yellow square above a purple circle": Category.POSITION,
    "an orange square": Category.SINGLE,
}


@pytest.mark.parametrize("caption,category", EXAMPLES.items())
def test_world_md_examples_parse_and_format_back(caption, category):
    spec = parse_caption(caption)
    assert spec.category is category
    assert spec.caption == caption


def test_round_trip_every_category():
    rng = random.Random(1)
    for category in Category:
        for _ in range(200):
            spec = sample_prompt(rng, category, exclude_held_out=False)
            assert parse_caption(spec.caption) == spec


def test_both_articles_accepted_and_normalised():
    assert parse_caption("a orange circle") == parse_caption("an orange circle")
    assert parse_caption("an red circle").caption == "a red circle"
    assert parse_caption("  A Red   Circle ").caption == "a red circle"


def test_relations_parse():
    spec = parse_caption("a red circle to the right of a blue square")
    assert spec.relation is Relation.RIGHT_OF
    assert spec.objects == (ObjectSpec("circle", "red"), ObjectSpec("square", "blue"))


@pytest.mark.parametrize("caption,word", [
    ("a red hexagon", "hexagon"),
    ("a magenta circle", "magenta"),
    ("five red circles", "five"),
])
def test_unknown_word_is_named(caption, word):
    with pytest.raises(PromptError, match=f"unknown word '{word}'"):
        parse_caption(caption)


@pytest.mark.parametrize("caption,fragment", [
    ("", "empty prompt"),
    ("a red", "expected a shape but found the end"),
    ("red circle", "expected 'a' or 'an'"),
    ("two red circle", "expected a plural shape"),
    ("a red circle above", "expected 'a' or 'an' but found the end"),
    ("a red circle a blue square", "unexpected word 'a'"),
    ("a red circle to left of a blue square", "expected 'the' but found 'left'"),
])
def test_malformed_prompts(caption, fragment):
    with pytest.raises(PromptError, match=fragment):
        parse_caption(caption)
    assert "\n" not in str(pytest.raises(PromptError, parse_caption, caption).value)


def test_training_stream_never_shows_held_out_pairs():
    stream = WorldStream(32)
    seen = set()
    for step in range(20):
        layouts, captions = stream.raw(seed=0, step=step, size=64)
        for caption in captions:
            spec = parse_caption(caption)
            pairs = {(o.colour, o.shape) for o in spec.objects}
            assert not pairs & HELD_OUT, caption
            seen |= pairs
    assert len(seen) == 8 * 3 - len(HELD_OUT)  # every other pair does appear


def test_stream_is_a_function_of_seed_and_step():
    stream = WorldStream(16)
    a, b = stream.batch(3, 7, 8), stream.batch(3, 7, 8)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert stream.batch(3, 8, 8)[1] != a[1]


def test_layouts_respect_world_rules():
    rng = random.Random(0)
    for category in Category:
        for _ in range(100):
            spec = sample_prompt(rng, category, exclude_held_out=False)
            objs = layout(spec, rng)
            assert len(objs) == len(spec.objects)
            for o in objs:
                assert o.s / 2 + MARGIN <= o.cx <= 1 - o.s / 2 - MARGIN + 1e-9
                assert 0.2 <= o.s <= 0.42
            for i, a in enumerate(objs):
                for b in objs[i + 1:]:
                    reach = (a.s + b.s) / 2 + GAP
                    assert abs(a.cx - b.cx) >= reach - 1e-9 or abs(a.cy - b.cy) >= reach - 1e-9
            for o, want in zip(objs, spec.objects):
                if want.size == "small":
                    assert abs(o.s - 0.22) < 0.01
                if want.size == "large":
                    assert abs(o.s - 0.40) < 0.015
            if category is Category.POSITION:
                a, b = objs
                dx, dy = b.cx - a.cx, b.cy - a.cy
                along = {Relation.LEFT_OF: dx, Relation.RIGHT_OF: -dx, Relation.ABOVE: dy, Relation.BELOW: -dy}
                across = dy if spec.relation in (Relation.LEFT_OF, Relation.RIGHT_OF) else dx
                assert along[spec.relation] >= 0.15 and abs(along[spec.relation]) > abs(across)


@pytest.mark.parametrize("resolution", [17, 32, 64, 96])
def test_render_exact_colours_at_any_resolution(resolution):
    spec = PromptSpec(Category.SINGLE, (ObjectSpec("square", "orange", "large"),))
    objs = layout(spec, random.Random(0))
    px = to_uint8(render([objs], resolution)).numpy()[0]
    assert px.shape == (resolution, resolution, 3)
    o = objs[0]
    centre = px[int(o.cy * resolution), int(o.cx * resolution)]
    assert tuple(centre) == COLOURS["orange"]
    assert tuple(px[0, 0]) == BACKGROUND
    # anti-aliased: some edge pixels lie strictly between background and fill
    values = {tuple(v) for v in px.reshape(-1, 3)}
    assert len(values) > 2


def test_render_area_matches_geometry():
    """Coverage integrates to the analytic area of each shape (pi r^2, s^2, s^2 / 2)."""
    res, s = 64, 0.4
    for shape, area in (("circle", np.pi * s * s / 4), ("square", s * s), ("triangle", s * s / 2)):
        from condiff.world.render import PlacedObject
        img = render([[PlacedObject(shape, "white", 0.5, 0.5, s)]], res)
        bg = torch.tensor(BACKGROUND).view(3, 1, 1) / 127.5 - 1
        fg = torch.tensor(COLOURS["white"]).view(3, 1, 1) / 127.5 - 1
        coverage = ((img[0] - bg) / (fg - bg)).mean(0)
        assert coverage.sum().item() / res ** 2 == pytest.approx(area, rel=0.01)


@pytest.mark.parametrize("resolution", [64, 256])
def test_scene_boxes_are_the_objects_the_oracle_finds(resolution):
    """WORLD.md v2: each object's phrase and exact box; checked against the oracle's own detection of the render."""
    from condiff.data.world import WorldStream
    from condiff.world.oracle import detect

    stream = WorldStream(resolution, exclude_held_out=False)
    raw = stream.raw(seed=3, step=0, size=24)
    images, captions = stream.materialize(raw)
    for px, caption, boxes in zip(to_uint8(images).numpy(), captions, stream.boxes(raw)):
        found = detect(px)
        assert len(found) == len(boxes)
        for b in boxes:
            x0, y0, x1, y1 = b["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and b["phrase"] in caption or caption.startswith(("two", "three", "four"))
            near = min(found, key=lambda o: abs(o.cx - (x0 + x1) / 2) + abs(o.cy - (y0 + y1) / 2))
            assert abs(near.cx - (x0 + x1) / 2) < 2 / resolution and abs(near.w - (x1 - x0)) < 3 / resolution
            assert b["phrase"].split()[-1] == near.shape and b["phrase"].split()[-2] == near.colour
