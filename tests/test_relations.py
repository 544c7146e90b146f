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


def _unet_eps_model(causal_layers: int):
    """A real (untrained) text encoder + UNet with the position embeddings zeroed: without causal layers its
    text side is a set function of the words, so a caption and its object-swapped twin give the same eps."""
    import torch

    from condiff.nets.text import TextEncoder, TextEncoderConfig
    from condiff.nets.unet import UNet, UNetConfig
    from condiff.world.grammar import VOCABULARY

    torch.manual_seed(0)
    text = TextEncoder(TextEncoderConfig(vocab=list(VOCABULARY), width=32, layers=1, heads=2,
                                         causal_layers=causal_layers)).eval()
    unet = UNet(UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                           head_channels=16, context_dim=32, resolution=16)).eval()
    with torch.no_grad():
        text.pos.zero_()
        for p in text.causal.parameters():
            p.normal_(0, 0.2)
        for p in unet.parameters():  # an untrained UNet's zero-initialised output layers would hide the text
            p.add_(0.05 * torch.randn_like(p))
    return lambda x, t, captions: unet(x, t, **text.encode(captions))


def test_the_loss_probe_finds_no_order_in_a_bag_of_words_model_and_order_in_a_causal_one():
    from condiff.diffusion.schedule import NoiseSchedule, cosine_betas
    from condiff.eval.relations import relation_loss_gaps

    schedule = NoiseSchedule(cosine_betas(1000))
    bag = relation_loss_gaps(_unet_eps_model(0), schedule, n_scenes=16, timesteps=(500, 900), resolution=16)
    # the same words give the same eps, to rounding; "left" -> "above" is another word. Untrained, the sign of a
    # gap is random, so the test reads the spread of the per-scene loss changes (the paired s.e.)
    assert all(abs(row["swap"]) < 1e-6 and row["swap_se"] < 1e-6 for row in bag["rows"])
    assert all(row["axis_se"] > 1e-4 for row in bag["rows"])
    causal = relation_loss_gaps(_unet_eps_model(2), schedule, n_scenes=16, timesteps=(500, 900), resolution=16)
    assert all(row["swap_se"] > 1e-5 for row in causal["rows"])


def test_the_loss_probe_charges_a_model_that_knows_the_scene_for_every_wrong_caption():
    """An eps model that knows each true caption's scene exactly: zero loss on it, positive gaps elsewhere."""
    import torch

    from condiff.diffusion.schedule import NoiseSchedule, cosine_betas
    from condiff.eval.relations import position_scenes, relation_loss_gaps

    schedule = NoiseSchedule(cosine_betas(1000))
    scenes = {}

    def knows(x_t, t, captions):
        ab = schedule.alpha_bar_at(t).view(-1, 1, 1, 1)
        x0 = torch.stack([scenes.get(c, torch.zeros(3, 16, 16)) for c in captions])
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    probe = dict(n_scenes=8, timesteps=(300, 900), resolution=16)
    specs, x0 = position_scenes(8, 16)
    scenes.update({spec.caption: img for spec, img in zip(specs, x0)})
    report = relation_loss_gaps(knows, schedule, **probe)
    for row in report["rows"]:
        assert row["loss"] < 1e-8
        assert row["swap"] > 1 and row["flip"] > 1 and row["axis"] > 1
