"""The fine-tuned inpainting model (GLIDE): random training masks, zero-initialised input channels, the pipeline's
mask= / masked_image= inputs, and `condiff edit inpaint --method model`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from condiff.cli import main
from condiff.data.masks import InpaintConfig, inpaint_inputs, training_masks
from condiff.nets.unet import UNet, UNetConfig
from condiff.pipelines.editing import inpaint
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.png import read_parameters
from condiff.train.tasks.text2image import widen_input_conv

from conftest import TINY


def test_training_masks_have_the_configured_kinds_and_shares():
    cfg = InpaintConfig(p_box=0.5, p_freeform=0.3, p_full=0.2, box_min=0.25, box_max=0.5)
    m = training_masks(torch.Generator().manual_seed(0), 600, 32, cfg)[:, 0]
    assert m.shape == (600, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}
    full = m.flatten(1).all(1)
    rows, cols = m.any(2), m.any(1)  # a rectangle fills its bounding box
    rect = ~full & (m.sum((1, 2)) == rows.sum(1) * cols.sum(1))
    strokes = ~full & ~rect
    assert abs(full.float().mean() - 0.2) < 0.05 and abs(rect.float().mean() - 0.5) < 0.07
    assert m[strokes].sum((1, 2)).min() > 0  # every stroke mask paints something
    sides = torch.cat([rows[rect].sum(1), cols[rect].sum(1)])
    assert sides.min() >= 8 and sides.max() <= 16  # 0.25 and 0.5 of 32
    again = training_masks(torch.Generator().manual_seed(0), 600, 32, cfg)[:, 0]
    assert torch.equal(m, again)  # the run's generator decides them: a resumed run draws the same masks
    with pytest.raises(ValueError, match="shares"):
        InpaintConfig(p_box=0.9).validate()


def test_inpaint_inputs_zero_the_hole_and_pool_the_mask_to_the_latent_grid():
    img = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 1:3, 5:8] = 1
    out = inpaint_inputs(img, mask)
    assert torch.equal(out["masked_image"][0, :, 1:3, 5:8], torch.zeros(3, 2, 3))
    assert torch.equal(out["masked_image"][1], img[1]) and torch.equal(out["mask"], mask)
    lat = inpaint_inputs(img, mask, encode=lambda x: x[:, :, ::4, ::4])  # a stand-in "encoder" to a 2x2 grid
    assert lat["mask"][0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]  # a cell is repainted if any pixel of it is


def test_widened_input_channels_leave_the_network_unchanged():
    """New zero-weight channels (inserted after x_t's, before a layout map's) change no output, whatever they hold."""
    base = dict(resolution=8, in_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), head_channels=16, context_dim=8)
    torch.manual_seed(0)
    old = UNet(UNetConfig(**base, grounding_dim=8, grounding_token_dim=16, grounding_map_channels=3))
    new = UNet(UNetConfig(**base, extra_in_channels=5, grounding_dim=8, grounding_token_dim=16, grounding_map_channels=3))
    state = widen_input_conv(old.state_dict(), new.state_dict(), at=4, count=5)
    new.load_state_dict(state)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 70])
    kw = dict(context=torch.randn(2, 3, 8), context_mask=torch.ones(2, 3, dtype=torch.bool), pooled=torch.randn(2, 8),
              box_phrases=torch.randn(2, 2, 8), boxes=torch.tensor([[[0.1, 0.1, 0.5, 0.5]] * 2] * 2),
              box_mask=torch.ones(2, 2, dtype=torch.bool))
    with torch.no_grad():
        want = old(x, t, **kw)
        got = new(x, t, mask=torch.rand(2, 1, 8, 8), masked_image=torch.randn(2, 4, 8, 8), **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_inpainter(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inpainter")
    cfg = json.loads(json.dumps(TINY))
    cfg["init"] = {"from_model": str(tiny_model)}
    cfg["inpaint"] = {"p_box": 0.5, "p_freeform": 0.25, "p_full": 0.25}
    (tmp / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp / "c.json"), "--out", str(tmp / "run")]) == 0
    return tmp / "run" / "model"


def test_an_inpainting_fine_tune_starts_as_its_base_model(tiny_model, tiny_inpainter, tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["init"] = {"from_model": str(tiny_model)}
    cfg["inpaint"] = {}
    cfg["optim"]["steps"] = 0
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "run")]) == 0
    base, start = (Text2ImagePipeline.from_pretrained(f) for f in (tiny_model, tmp_path / "run" / "model"))
    assert start.inpainting and not base.inpainting and start.unet.cfg.extra_in_channels == 4
    img, mask = torch.rand(1, 3, 16, 16) * 2 - 1, torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    out, _ = inpaint(start, ["a red circle"], img, mask, [3], base.defaults.replace(steps=3), paste_back=False)
    torch.testing.assert_close(out, base(["a red circle"], [3], base.defaults.replace(steps=3)), rtol=1e-4, atol=1e-4)


def test_edit_inpaint_uses_the_inpainting_model_and_refuses_it_on_a_plain_one(tiny_model, tiny_inpainter, tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "o.png"
    assert main(["edit", "inpaint", str(src), "--model", str(tiny_inpainter), "--prompt", "a red circle",
                 "--box", "0,0,8,16", "--steps", "2", "--out", str(out)]) == 0
    assert read_parameters(out)["Edit"] == "inpaint (inpainting model)"
    assert np.array_equal(np.asarray(Image.open(out))[:, 8:], np.asarray(Image.open(src))[:, 8:])
    capsys.readouterr()
    assert main(["edit", "inpaint", str(src), "--model", str(tiny_model), "--method", "model", "--prompt", "a red circle",
                 "--box", "0,0,8,16", "--steps", "2", "--out", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inpainting inputs" in err[0] and not (tmp_path / "bad.png").exists()
    # text-to-image with an inpainting model is the whole image masked (its p_full share)
    assert main(["generate", "a red circle", "--model", str(tiny_inpainter), "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    pipe = Text2ImagePipeline.from_pretrained(tiny_inpainter)
    x = torch.zeros(1, 3, 16, 16)
    full = torch.ones(1, 1, 16, 16)
    opts = pipe.defaults.replace(steps=2)
    torch.testing.assert_close(pipe(["a red circle"], [0], opts), inpaint(pipe, ["a red circle"], x, full, [0], opts)[0])
    assert inpaint(pipe, ["a"], x, full, [0], opts, method="repaint")[1] == "RePaint"
    with pytest.raises(ValueError, match="method"):
        inpaint(pipe, ["a"], x, full, [0], opts, method="glide")


def test_object_masks_cover_one_scene_box_grown_by_the_margin():
    from condiff.data.masks import object_mask

    boxes = [{"phrase": "a red circle", "box": [0.25, 0.5, 0.5, 0.75]}]
    cfg = InpaintConfig(p_box=0.0, p_freeform=0.0, p_full=0.0, p_object=1.0, object_margin=0.0625)
    g = torch.Generator().manual_seed(0)
    m = training_masks(g, 20, 32, cfg, [boxes] * 19 + [[]])[:, 0]
    for mask in m[:19]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask.sum() == len(rows) * len(cols)  # a rectangle
        assert 14 <= rows[0] <= 16 and 24 <= rows[-1] + 1 <= 26 and 6 <= cols[0] <= 8 and 16 <= cols[-1] + 1 <= 18  # 2 px at most
    assert m[19].sum() > 0  # a scene without boxes gets a random box
    exact = object_mask(torch.Generator().manual_seed(1), 32, boxes, 0.0)
    assert exact[16:24, 8:16].all() and exact.sum() == 64


def test_shipped_inpaint64_inpaints_a_new_object_into_scenes_drawn_by_code():
    """The Editing issue's bar: a two-object scene drawn without its second object, that object's box (+2 px)
    repainted with the two-object caption; the oracle reads both objects in >= 7 of 8, and outside the mask the
    output is the input exactly (measured 8 of 8 with benchmarks/inpainting.py, whose first 8 cases these are)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from editing import inpaint_cases, ok

    from condiff.catalogue import INPAINT_MODEL

    pipe = Text2ImagePipeline.from_pretrained(INPAINT_MODEL)
    cases = inpaint_cases(8, 64, 0)
    images, masks = torch.cat([c[0] for c in cases]), torch.cat([c[1] for c in cases])
    prompts = [c[2] for c in cases]
    out, method = inpaint(pipe, prompts, images, masks, list(range(8)), pipe.defaults, "auto")
    assert method == "inpainting model"
    assert torch.equal(out[~masks.expand_as(out)], images[~masks.expand_as(images)])
    assert sum(ok(out, prompts)) >= 7
