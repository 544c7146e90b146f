"""unCLIP's decoder: the UNet's image-embedding input, its training kind, slerp, and variations / interpolation /
text diffs through `condiff edit`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from condiff.cli import main
from condiff.diffusion.samplers import PerSampleNoise
from condiff.nets.clip import load_clip
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.pipelines.unclip import decode, image_embeddings, interpolate, slerp, variations
from condiff.png import read_parameters

CLIP = {"model": "clip", "clip": {"image": {"patch_size": 2, "model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                            "attention_resolutions": [4], "head_channels": 8},
                                  "text": {"width": 32, "layers": 1, "heads": 2}, "embed_dim": 16},
        "data": {"resolution": 16}, "optim": {"steps": 2, "batch_size": 6, "warmup_steps": 1}, "checkpoint_every": 1}


@pytest.fixture(scope="module")
def decoder(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unclip")
    (tmp / "clip.json").write_text(json.dumps(CLIP))
    assert main(["train", "--config", str(tmp / "clip.json"), "--out", str(tmp / "clip")]) == 0
    cfg = json.loads(json.dumps(TINY)) | {"init": {"from_model": str(tiny_model)}, "unclip": {"clip": str(tmp / "clip" / "model")}}
    (tmp / "dec.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp / "dec.json"), "--out", str(tmp / "dec")]) == 0
    return tmp / "dec" / "model", tmp / "clip" / "model"


def test_slerp_closed_forms():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    h = math.sqrt(0.5)
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([[h, h]]))
    third = slerp(a, b, 1 / 3)
    torch.testing.assert_close(third, torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]]))


def test_the_decoder_reads_the_embedding_and_zero_is_the_dropped_one(decoder):
    folder, clip_dir = decoder
    pipe, clip = Text2ImagePipeline.from_pretrained(folder), load_clip(clip_dir)
    assert pipe.unet.cfg.image_embed_dim == 16
    with torch.no_grad():  # make the embedding matter (the 2-step decoder barely moved its zero-initialised layers)
        pipe.unet.image_embed_proj.weight.normal_()
    x = torch.randn(1, 3, 16, 16)
    e = image_embeddings(clip, torch.rand(1, 3, 16, 16) * 2 - 1)
    opts = pipe.defaults.replace(steps=2, guidance_scale=1.0)
    assert not torch.allclose(decode(pipe, e, [""], [0], opts), decode(pipe, -e, [""], [0], opts))
    torch.testing.assert_close(decode(pipe, torch.zeros_like(e), ["a red circle"], [0], opts),
                               pipe(["a red circle"], [0], opts))  # no embedding given: the zero (dropped) one
    three = variations(pipe, clip, x, 3, 5, opts)
    torch.testing.assert_close(three[1:2], decode(pipe, image_embeddings(clip, x), [""], [6], opts), rtol=1e-4, atol=1e-5)
    path = interpolate(pipe, clip, x, -x, 3, 0, opts)
    noise = PerSampleNoise([0])((1, *pipe.sample_shape))  # every frame starts from seed 0's noise
    ends = decode(pipe, image_embeddings(clip, torch.cat([x, -x])), [""] * 2, [0, 0], opts, x=torch.cat([noise, noise]))
    torch.testing.assert_close(path[[0, 2]], ends, rtol=1e-4, atol=1e-5)  # the path's ends are the two embeddings


def test_edit_variations_interpolate_textdiff_write_grids(decoder, tmp_path, capsys):
    folder, clip_dir = decoder
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src)
    common = ["--model", str(folder), "--clip", str(clip_dir), "--sample-steps", "2"]
    assert main(["edit", "variations", str(src), *common, "--num-images", "3", "--out", str(tmp_path / "v.png")]) == 0
    assert Image.open(tmp_path / "v.png").size == (48, 16)
    assert read_parameters(tmp_path / "v.png")["Edit"] == "unCLIP variations"
    assert main(["edit", "interpolate", str(src), str(src), *common, "--steps", "4", "--out", str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size == (64, 16)
    assert main(["edit", "textdiff", str(src), *common, "--from", "a red circle", "--to", "a blue circle",
                 "--out", str(tmp_path / "t.png")]) == 0
    capsys.readouterr()
    for argv, message in ((["variations", str(src), "--num-images", "0"], "--num-images"),
                          (["textdiff", str(src), "--from", "a red circle", "--to", "a crimson circle"], "crimson"),
                          (["variations", str(tmp_path / "none.png")], "no such file")):
        assert main(["edit", *argv, *common, "--out", str(tmp_path / "bad.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not (tmp_path / "bad.png").exists()
