import json

import pytest

TINY = {
    "seed": 0,
    "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1},
    "unet": {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
             "head_channels": 16},
    "text": {"width": 32, "layers": 1, "heads": 2},
    "pipeline": {"schedule": {"num_timesteps": 100}},
    "data": {"resolution": 16},
    "log_every": 1, "sample_every": 0, "checkpoint_every": 1,
}


@pytest.fixture(scope="session")
def tiny_config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_config_path, tmp_path_factory):
    """A tiny text-to-image model trained for two steps on the world; returns its model folder."""
    from condiff.config import load_json
    from condiff.train.config import TrainConfig
    from condiff.train.trainer import train

    run_dir = tmp_path_factory.mktemp("run")
    train(load_json(TrainConfig, tiny_config_path), run_dir, device="cpu", workers=0)
    return run_dir / "model"
