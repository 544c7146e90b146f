"""The relation probe against generators whose answers are known in closed form."""
import dataclasses
import math
import random

from condiff.eval.relations import probe_relations
from condiff.world.grammar import Category, parse_caption
from condiff.world.render import layout, render


def ground_truth(captions, seeds):
    """A perfect model: the renderer's own scene for each caption."""
    layouts = [layout(parse_caption(c), random.Random(f"gt/{s}/{c}")) for c, s in zip(captions, seeds)]
    return render(layouts, 32)


def relation_blind(captions, seeds):
    """A model that reads the objects but not the relation: one scene per (objects, seed), whatever the relation."""
    layouts = []
    for c, s in zip(captions, seeds):
        spec = dataclasses.replace(parse_caption(c), category=Category.TWO_OBJECTS, relation=None)
        layouts.append(layout(spec, random.Random(f"blind/{s}/{spec.caption}")))
    return render(layouts, 32)


def test_a_perfect_model_gets_every_relation_right():
    report = probe_relations(ground_truth, n_pairs=4, n_seeds=4)
    assert report["images"] == 4 * 4 * 4
    assert report["both_objects"] == 1.0
    assert report["axis_right"] == report["order_right_given_axis"] == 1.0
    assert report["relation_right_given_objects"] == 1.0
    assert all(v >= 0.15 for v in report["mean_along"].values())  # WORLD.md: at least 15% of the side
    assert report["flip_change"] > 0.01 and report["axis_change"] > 0.01


def test_a_relation_blind_model_scores_exactly_chance():
    report = probe_relations(relation_blind, n_pairs=4, n_seeds=4)
    assert report["flip_change"] == 0.0 and report["axis_change"] == 0.0
    # each scene lies along one axis: it is right on that axis for two of the four relations, in order for one
    assert report["axis_right"] == 0.5
    assert report["order_right_given_axis"] == 0.5
    along = report["mean_along"]
    assert math.isclose(along["to the left of"], -along["to the right of"], abs_tol=1e-12)
    assert math.isclose(along["above"], -along["below"], abs_tol=1e-12)
    assert report["relation_right_given_objects"] <= 0.5


def test_the_probe_is_deterministic():
    a = probe_relations(ground_truth, n_pairs=2, n_seeds=2)
    b = probe_relations(ground_truth, n_pairs=2, n_seeds=2)
    assert a == b
