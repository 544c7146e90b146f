"""GPU presets (configs/gpu/*.json) are valid configs of the shipped designs, and channels_last trains the weights
that the default layout does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY
from condiff.cli import main
from condiff.data import make_dataset
from condiff.train.tasks import load_train_config, task_of

PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs" / "gpu").glob("*.json"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_gpu_presets_build(path):
    raw = json.loads(path.read_text())
    assert raw["precision"] == "bf16" and raw["channels_last"] and raw["compile"]
    cfg = load_train_config(path)
    model = task_of(cfg).build(cfg, make_dataset(cfg.data), resume=False)
    n = sum(p.numel() for p in model.parameters())
    assert 3e7 < n < 1e8  # 40-48 M parameters: about 10 times the CPU models


def test_channels_last_trains_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    out = {}
    for flag in (False, True):
        cfg = json.loads(json.dumps(TINY)) | {"channels_last": flag}
        (tmp_path / f"{flag}.json").write_text(json.dumps(cfg))
        assert main(["train", "--config", str(tmp_path / f"{flag}.json"), "--out", str(tmp_path / str(flag)), "--workers", "0"]) == 0
        out[flag] = load_file(str(tmp_path / str(flag) / "model" / "unet" / "model.safetensors"))
    for k in out[False]:
        torch.testing.assert_close(out[True][k], out[False][k], rtol=1e-4, atol=1e-5)
