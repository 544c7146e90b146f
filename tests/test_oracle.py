import random

import numpy as np
import pytest

from condiff.world.grammar import Category, sample_prompt
from condiff.world.oracle import detect, judge, judge_objects
from condiff.world.render import PlacedObject, layout, render, to_uint8


def _images(layouts, res):
    return to_uint8(render(layouts, res)).numpy()


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("category", list(Category))
def test_oracle_at_least_995_on_ground_truth(category, resolution):
    rng = random.Random(f"gt/{category}/{resolution}")
    specs = [sample_prompt(rng, category, exclude_held_out=False) for _ in range(200)]
    images = _images([layout(s, rng) for s in specs], resolution)
    verdicts = [judge_objects(s, detect(im)) for s, im in zip(specs, images)]
    accuracy = np.mean([v.correct for v in verdicts])
    assert accuracy >= 0.995, [v.reason for v in verdicts if not v.correct][:5]


def _scene(*objs, res=32):
    return _images([[PlacedObject(*o) for o in objs]], res)[0]


def test_detect_reads_shape_colour_and_box():
    img = _scene(("triangle", "cyan", 0.3, 0.3, 0.3), ("circle", "orange", 0.72, 0.7, 0.25), res=64)
    found = detect(img)
    assert [(o.shape, o.colour) for o in found] == [("triangle", "cyan"), ("circle", "orange")]
    assert found[0].cx == pytest.approx(0.3, abs=0.02) and found[0].side == pytest.approx(0.3, abs=0.03)
    assert found[1].cy == pytest.approx(0.7, abs=0.02) and found[1].side == pytest.approx(0.25, abs=0.03)


def test_rejects_swapped_colours():
    img = _scene(("circle", "blue", 0.25, 0.5, 0.3), ("square", "red", 0.75, 0.5, 0.3))
    assert judge(img, "a blue circle and a red square").correct
    v = judge(img, "a red circle and a blue square")
    assert not v.correct and "missing 1 red circle" in v.reason and "wrong colour or shape" in v.reason


def test_rejects_wrong_count():
    img = _scene(("square", "green", 0.2, 0.2, 0.25), ("square", "green", 0.7, 0.3, 0.25),
                 ("square", "green", 0.4, 0.75, 0.25))
    assert judge(img, "three green squares").correct
    assert "extra 1 green square" in judge(img, "two green squares").reason
    assert "missing 1 green square" in judge(img, "four green squares").reason


def test_rejects_wrong_relation():
    img = _scene(("circle", "red", 0.25, 0.5, 0.3), ("square", "blue", 0.75, 0.5, 0.3))
    assert judge(img, "a red circle to the left of a blue square").correct
    assert judge(img, "a blue square to the right of a red circle").correct
    v = judge(img, "a red circle to the right of a blue square")
    assert not v.correct and v.reason.startswith("wrong relation")
    assert not judge(img, "a red circle above a blue square").correct


def test_relation_threshold_is_15_percent_of_canvas():
    near = _scene(("circle", "red", 0.40, 0.25, 0.22), ("circle", "blue", 0.52, 0.75, 0.22), res=64)
    # dx = 0.12 < 0.15 and |dy| > |dx|: neither left-of nor right-of holds, below holds
    assert not judge(near, "a red circle to the left of a blue circle").correct
    assert judge(near, "a red circle above a blue circle").correct


def test_rejects_extra_object():
    img = _scene(("triangle", "yellow", 0.3, 0.3, 0.3), ("circle", "white", 0.75, 0.75, 0.25))
    v = judge(img, "a yellow triangle")
    assert not v.correct and v.reason == "extra 1 white circle"


def test_rejects_wrong_shape_and_size():
    img = _scene(("square", "purple", 0.5, 0.5, 0.40))
    assert judge(img, "a large purple square").correct
    assert "wrong size" in judge(img, "a small purple square").reason
    assert "missing 1 purple circle" in judge(img, "a purple circle").reason


def test_empty_image_is_missing_everything():
    img = _images([[]], 32)[0]
    assert detect(img) == []
    assert judge(img, "a red circle").reason.startswith("missing 1 red circle")


def test_noise_specks_and_slivers_are_not_objects():
    img = _scene(("circle", "green", 0.5, 0.5, 0.3), res=32).copy()
    img[2, 2] = (220, 40, 40)  # one red pixel
    img[30, 5:20] = (95, 99, 115)  # a one-pixel grey line (a shading artefact)
    assert judge(img, "a green circle").correct
