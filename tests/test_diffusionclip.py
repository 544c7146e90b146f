"""DiffusionCLIP: the directional loss, the augmented CLIP view, the fine-tune's plumbing and `condiff edit clip`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from condiff.cli import main
from condiff.nets.clip import load_clip
from condiff.pipelines.diffusionclip import (DiffusionCLIPConfig, apply, clip_view, directional_loss, fine_tune,
                                             invert_to_t0, regenerate_from)
from condiff.catalogue import DEFAULT_JUDGES
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.png import read_parameters


@pytest.fixture(scope="module")
def clip():
    return load_clip(DEFAULT_JUDGES["clip"])


def test_the_clip_view_is_box_filtered_and_augmentations_leave_a_flat_image_alone(clip):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(clip_view(clip, x), clip.encode_image(torch.nn.functional.avg_pool2d(x, 2)))
    flat = torch.full((1, 3, 64, 64), 0.3)  # every shift (reflected) and flip of a flat image is itself
    torch.testing.assert_close(clip_view(clip, flat, augmentations=5, generator=torch.Generator().manual_seed(1)),
                               clip_view(clip, flat), rtol=1e-5, atol=1e-5)
    assert clip_view(clip, torch.rand(1, 3, 16, 16)).shape == (1, clip.cfg.embed_dim)  # smaller images are resized up


def test_directional_loss_closed_forms(clip):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ref = clip_view(clip, x)
    direction = torch.nn.functional.normalize(torch.randn(3, clip.cfg.embed_dim), dim=-1)
    torch.testing.assert_close(directional_loss(clip, x, ref, direction), torch.ones(3))  # no change: cos 0
    y = torch.rand(3, 3, 32, 32) * 2 - 1
    along = torch.nn.functional.normalize(clip_view(clip, y) - ref, dim=-1)
    torch.testing.assert_close(directional_loss(clip, y, ref, along), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(directional_loss(clip, y, ref, -along), torch.full((3,), 2.0), atol=1e-5, rtol=0)


def _scene(seed: int, side: int = 16) -> torch.Tensor:
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_a_fine_tune_with_no_loss_is_the_round_trip_and_a_real_one_lowers_the_loss(tiny_model, clip):
    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    x, src, tgt = torch.cat([_scene(0), _scene(1)]), ["a red circle"] * 2, ["a blue circle"] * 2
    still = DiffusionCLIPConfig(steps=6, iterations=1, clip_weight=0.0, l1_weight=0.0, regenerate_with="source")
    edited, _ = fine_tune(pipe, clip, x, src, tgt, still)
    x_k, k = invert_to_t0(pipe, x, src, still)
    assert k == 3 and x_k.shape == (2, 3, 16, 16)
    torch.testing.assert_close(apply(pipe, edited, x, src, tgt, still), regenerate_from(pipe, x_k, k, src, still))
    for a, b in zip(pipe.unet.parameters(), edited.unet.parameters()):
        assert torch.equal(a, b)  # zero gradients: Adam does not move
    cfg = DiffusionCLIPConfig(steps=6, t0=0.5, iterations=6, lr=1e-3, augmentations=0)
    edited, losses = fine_tune(pipe, clip, x, src, tgt, cfg)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert len(losses) == 18 and last < first - 0.05
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), edited.unet.parameters()))
    for a, b in zip(pipe.text_encoder.parameters(), edited.text_encoder.parameters()):
        assert torch.equal(a, b)  # only the UNet is fine-tuned
    with pytest.raises(ValueError, match="unknown word"):
        fine_tune(pipe, clip, x, src, ["a crimson circle"] * 2, cfg)


def _png(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_edit_clip_saves_a_model_that_applies_to_other_images(tiny_model, tmp_path, capsys):
    a, b = _png(tmp_path / "a.png", 0), _png(tmp_path / "b.png", 1)
    common = ["--model", str(tiny_model), "--source", "a red circle", "--target", "a blue circle", "--clip-steps", "4",
              "--iterations", "1"]
    assert main(["edit", "clip", a, *common, "--train", b, "--save-model", str(tmp_path / "m"), "--out", str(tmp_path / "o.png")]) == 0
    info = read_parameters(tmp_path / "o.png")
    assert info["Edit"] == "DiffusionCLIP" and info["Source"] == "a red circle"
    assert json.loads((tmp_path / "m" / "diffusionclip.json").read_text())["config"]["steps"] == 4
    assert main(["edit", "clip", b, *common, "--apply", str(tmp_path / "m"), "--out", str(tmp_path / "p.png")]) == 0
    assert read_parameters(tmp_path / "p.png")["Fine-tuned model"] == "m"
    assert read_parameters(tmp_path / "o.png")["Fine-tune iterations"] == "1"
    capsys.readouterr()
    for bad, message in ((["--target", " "], "--target"), (["--target", "a crimson circle"], "crimson"),
                         (["--apply", str(tmp_path)], "--apply"), (["--t0", "nan"], "t0")):
        argv = ["edit", "clip", a, *common, *bad, "--out", str(tmp_path / "bad.png")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not (tmp_path / "bad.png").exists()
