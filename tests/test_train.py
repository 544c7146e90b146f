import sys
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from condiff.cli import main
from condiff.config import ConfigError, from_dict, load_json, to_dict
from condiff.data.imagefolder import DataError, ImageFolder
from condiff.io import CheckpointError, load_tensors
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.train.config import TrainConfig
from condiff.train.trainer import train


def test_config_round_trip_and_errors(tiny_config_path):
    cfg = load_json(TrainConfig, tiny_config_path)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
    assert cfg.unet.channel_mult == (1, 2)
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        from_dict(TrainConfig, {"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="'quadratic' is not one of"):
        from_dict(TrainConfig, {"pipeline": {"schedule": {"beta_schedule": "quadratic"}}})
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(TrainConfig, {"seed": "zero"})
    with pytest.raises(ConfigError, match="'snr' is not one of"):
        from_dict(TrainConfig, {"loss": {"weighting": "snr"}})


def test_min_snr_training_loss(tiny_config_path, tmp_path):
    """Min-SNR-gamma in the trainer: gamma above every SNR gives back L_simple exactly; gamma = 5 down-weights."""
    from condiff.train.trainer import setup
    cfg = load_json(TrainConfig, tiny_config_path)
    run = setup(cfg, tmp_path / "a", device="cpu")
    images, captions = run.data.materialize(run.data.raw(0, 0, 4), run.device)

    def loss(weighting, gamma):
        run.cfg.loss.weighting, run.cfg.loss.min_snr_gamma = weighting, gamma
        run.generator.manual_seed(1)
        return run.task.loss(run, images, captions).item()

    uniform = loss("uniform", 5.0)
    assert loss("min_snr", 1e30) == pytest.approx(uniform, rel=1e-6)
    assert loss("min_snr", 5.0) < uniform
    cfg.loss.min_snr_gamma = 0.0
    cfg.loss.weighting = "min_snr"
    with pytest.raises(ConfigError, match="min_snr_gamma"):
        setup(cfg, tmp_path / "b", device="cpu")


def test_training_writes_checkpoints_and_a_loadable_model(tiny_model):
    run = tiny_model.parent
    assert (run / "checkpoints" / "latest").read_text() == "step_00000002"
    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    state = load_file(str(tiny_model / "unet" / "model.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in pipe.unet.state_dict().items())
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".*"))  # no half-written files left


def _weights(folder):
    return load_file(str(folder / "checkpoints" / (folder / "checkpoints" / "latest").read_text() / "state.safetensors"))


def test_resume_is_exact(tiny_config_path, tmp_path):
    straight = load_json(TrainConfig, tiny_config_path)
    straight.optim.steps = 4
    train(straight, tmp_path / "a", device="cpu", workers=0)
    half = load_json(TrainConfig, tiny_config_path)
    half.optim.steps = 2
    train(half, tmp_path / "b", device="cpu", workers=0)
    rest = load_json(TrainConfig, tiny_config_path)
    rest.optim.steps = 4
    train(rest, tmp_path / "b", resume=True, device="cpu", workers=1)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_snapshots_equal_the_model_of_a_run_stopped_there(tiny_config_path, tmp_path):
    """snapshot_every keeps the EMA pipeline at every N steps; snapshot N is the model a run of N steps ends with."""
    long = load_json(TrainConfig, tiny_config_path)
    long.optim.steps, long.snapshot_every = 4, 2
    train(long, tmp_path / "long", device="cpu", workers=0)
    short = load_json(TrainConfig, tiny_config_path)
    short.optim.steps = 2
    train(short, tmp_path / "short", device="cpu", workers=0)
    snaps = tmp_path / "long" / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step_00000002", "step_00000004"]
    assert not (tmp_path / "short" / "snapshots").exists()
    for snap, model in ((snaps / "step_00000002", tmp_path / "short" / "model"),
                        (snaps / "step_00000004", tmp_path / "long" / "model")):
        for part in ("unet", "text_encoder"):
            a, b = load_file(str(snap / part / "model.safetensors")), load_file(str(model / part / "model.safetensors"))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (snap, part)
    first = load_file(str(snaps / "step_00000002" / "unet" / "model.safetensors"))
    last = load_file(str(snaps / "step_00000004" / "unet" / "model.safetensors"))
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_corrupt_or_missing_checkpoint_gives_one_line_error(tiny_model, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_tensors(bad)
    with pytest.raises(CheckpointError, match="missing file"):
        load_tensors(tmp_path / "none.safetensors")
    import shutil
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    (copy / "unet" / "model.safetensors").write_bytes(b"garbage")
    assert main(["generate", "a red circle", "--model", str(copy), "--steps", "2", "--out", str(tmp_path / "x.png")]) == 2


def _make_folder(path, n=6):
    path.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        colour = ["crimson", "teal"][i % 2]
        arr = np.zeros((40, 48, 3), np.uint8)
        arr[..., 0 if colour == "crimson" else 2] = 200 + rng.integers(0, 40)
        Image.fromarray(arr).save(path / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", "text": f"A {colour} picture, photo number {i}."})
    (path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_train_on_an_image_folder(tiny_config_path, tmp_path, capsys):
    folder = _make_folder(tmp_path / "data")
    ds = ImageFolder(str(folder), 16)
    assert ds.images.shape == (6, 3, 16, 16) and -1 <= ds.images.min() and ds.images.max() <= 1
    assert "crimson" in ds.vocab and "photo" in ds.vocab
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config_path), "--out", str(out), "--data", str(folder),
                 "--device", "cpu", "--workers", "0"]) == 0
    pipe = Text2ImagePipeline.from_pretrained(out / "model")
    assert "teal" in pipe.text_encoder.tokenizer.stoi
    img = main(["generate", "a teal picture", "--model", str(out / "model"), "--steps", "2",
                "--out", str(tmp_path / "teal.png")])
    assert img == 0 and (tmp_path / "teal.png").is_file()


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing folder"):
        ImageFolder(str(tmp_path / "nope"), 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing file .*metadata.jsonl"):
        ImageFolder(str(tmp_path / "empty"), 16)
    (tmp_path / "empty" / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(DataError, match="expected a JSON object with 'file_name' and 'text'"):
        ImageFolder(str(tmp_path / "empty"), 16)


def test_sample_grids_for_world_and_folder_models(tiny_config_path, tmp_path):
    from condiff.train.trainer import setup

    run = setup(load_json(TrainConfig, tiny_config_path), tmp_path / "w", device="cpu")
    assert Image.open(run.task.sample(run, steps=2)).size[0] > 0
    cfg = load_json(TrainConfig, tiny_config_path)
    cfg.data.source, cfg.data.path = "imagefolder", str(_make_folder(tmp_path / "data"))
    run = setup(cfg, tmp_path / "f", device="cpu")
    assert Image.open(run.task.sample(run, steps=2)).size[0] > 0


def test_a_fresh_run_never_overwrites_an_existing_one(tiny_model, tiny_config_path, capsys):
    run_dir = tiny_model.parent
    before = (run_dir / "checkpoints" / "latest").read_text()
    assert main(["train", "--config", str(tiny_config_path), "--out", str(run_dir), "--device", "cpu"]) == 2
    assert "already holds a training run: pass --resume to continue it, --overwrite to start it over" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / "latest").read_text() == before


def test_overwrite_starts_a_run_over(tiny_config_path, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--config", str(tiny_config_path), "--out", str(out), "--workers", "0"]) == 0
    (out / "samples").mkdir(exist_ok=True)
    (out / "samples" / "old.png").write_bytes(b"x")
    first = load_file(str(out / "model" / "unet" / "model.safetensors"))
    assert main(["train", "--config", str(tiny_config_path), "--out", str(out), "--workers", "0", "--overwrite"]) == 0
    assert not (out / "samples" / "old.png").exists()
    again = load_file(str(out / "model" / "unet" / "model.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)  # the same config and seed: the same run again
    assert main(["train", "--config", str(tiny_config_path), "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_fine_tuning_starts_from_a_saved_pipeline(tiny_model, tiny_config_path, tmp_path):
    from condiff.train.trainer import setup
    pretrained = Text2ImagePipeline.from_pretrained(tiny_model)
    cfg = load_json(TrainConfig, tiny_config_path)
    cfg.init.from_model, cfg.init.text_token_scale = str(tiny_model), 0.5
    run = setup(cfg, tmp_path / "a", device="cpu")
    for k, v in pretrained.unet.state_dict().items():
        assert torch.equal(run.model.unet.state_dict()[k], v.float()) and torch.equal(run.ema.model.unet.state_dict()[k], v.float())
    emb = run.model.text_encoder.embed.weight
    assert torch.allclose(emb, 0.5 * pretrained.text_encoder.embed.weight.float())
    assert torch.equal(run.model.text_encoder.pos, pretrained.text_encoder.pos.float())
    assert (tmp_path / "a" / "config.json").exists() and json.loads((tmp_path / "a" / "config.json").read_text())["init"]["from_model"] == str(tiny_model)

    # adding causal text layers to a trained encoder: they load as the identity, so the text output is unchanged
    grown = load_json(TrainConfig, tiny_config_path)
    grown.init.from_model, grown.text.causal_layers = str(tiny_model), 1
    run = setup(grown, tmp_path / "grown", device="cpu")
    captions = ["a red circle to the left of a blue square", "two green triangles", ""]
    with torch.no_grad():
        mine, theirs = run.model.text_encoder.encode(captions), pretrained.text_encoder.float().encode(captions)
    assert torch.allclose(mine["context"], theirs["context"], atol=1e-5) and torch.allclose(mine["pooled"], theirs["pooled"], atol=1e-5)
    assert len(run.model.text_encoder.causal) == 1
    other = load_json(TrainConfig, tiny_config_path)
    other.init.from_model, other.text.layers = str(tiny_model), 5
    with pytest.raises(ConfigError, match="text_encoder of .* differs from the config in layers"):
        setup(other, tmp_path / "d", device="cpu")
    other = load_json(TrainConfig, tiny_config_path)
    other.init.from_model, other.unet.model_channels = str(tiny_model), 8
    with pytest.raises(ConfigError, match="unet of .* differs from the config in model_channels"):
        setup(other, tmp_path / "b", device="cpu")
    other = load_json(TrainConfig, tiny_config_path)
    other.init.from_model = str(tmp_path)
    with pytest.raises(ConfigError, match="is not a saved pipeline"):
        setup(other, tmp_path / "c", device="cpu")


def test_image_folder_reads_boxes_and_refuses_bad_ones(tmp_path):
    folder = _make_folder(tmp_path / "d", n=2)
    rows = [json.loads(l) for l in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[0]["boxes"] = [{"phrase": "a crimson picture", "box": [0.1, 0.2, 0.5, 0.9]}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = ImageFolder(str(folder), 16)
    assert ds.boxes([0, 1]) == [[{"phrase": "a crimson picture", "box": [0.1, 0.2, 0.5, 0.9]}], []]
    for bad in ([{"phrase": "x", "box": [0.5, 0.2, 0.1, 0.9]}], [{"phrase": "x", "box": [0, 0, 1.5, 1]}],
                [{"phrase": "", "box": [0, 0, 1, 1]}], {"phrase": "x"}):
        rows[0]["boxes"] = bad
        (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        with pytest.raises(DataError, match="metadata.jsonl:1: .*boxes"):
            ImageFolder(str(folder), 16)


@pytest.mark.parametrize("signame,code,said", [("SIGTERM", 143, "condiff: interrupted (SIGTERM)"),
                                               ("SIGINT", 130, "condiff: interrupted")])
def test_a_signal_saves_a_checkpoint_and_resume_finishes_exactly(tiny_config_path, tmp_path, signame, code, said):
    """SIGTERM (exit 143) and Ctrl-C's SIGINT (exit 130): a checkpoint at the next step boundary, one line naming
    --resume, no traceback, and --resume ends in the weights of an uninterrupted run."""
    import signal
    import subprocess
    import time

    cfg = json.loads(tiny_config_path.read_text()) | {"checkpoint_every": 5}
    cfg["optim"] = cfg["optim"] | {"steps": 40}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "condiff.cli", "train", "--config", str(path), "--workers", "0"]
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    while not latest.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "continue with --resume" in out and said in err, err[-500:]
    assert "Traceback" not in err
    saved = int(latest.read_text().split("_")[1])
    assert 5 <= saved < 40
    assert subprocess.run(cmd + ["--out", str(tmp_path / "killed"), "--resume"]).returncode == 0
    assert subprocess.run(cmd + ["--out", str(tmp_path / "straight")]).returncode == 0
    a, b = (load_file(str(tmp_path / r / "model" / "unet" / "model.safetensors")) for r in ("killed", "straight"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage", ["checkpoint", "export"])
def test_a_full_disk_keeps_the_last_checkpoint_and_stops_with_one_line(tiny_config_path, tmp_path, capsys, monkeypatch,
                                                                       stage):
    """ENOSPC injected into the safetensors write of step 2: step 1's checkpoint stays the latest and loads, no
    half-written file is left, the CLI exits 2 with one line, and --resume then trains exactly what a clean run does."""
    import errno
    import condiff.io

    real, calls = condiff.io.save_file, []
    fail_on = 4 if stage == "checkpoint" else 5  # per step: the checkpoint, then the exported text encoder and UNet

    def full_disk(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) == fail_on:
            with open(path, "wb") as f:
                f.write(b"\0" * 100)  # a partial file, as a write cut short by the disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    config, out = tiny_config_path, tmp_path / "r"
    monkeypatch.setattr(condiff.io, "save_file", full_disk)
    assert main(["train", "--config", str(config), "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # above it: the progress bar
    assert "Traceback" not in err and last.startswith("condiff: error: writing" if stage == "checkpoint" else
                                                      "condiff: error: exporting")
    assert "No space left on device" in last and "--resume" in last
    latest = (out / "checkpoints" / "latest").read_text()
    assert latest == ("step_00000001" if stage == "checkpoint" else "step_00000002")
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    load_tensors(out / "checkpoints" / latest / "state.safetensors")
    monkeypatch.setattr(condiff.io, "save_file", real)
    assert main(["train", "--config", str(config), "--out", str(out), "--workers", "0", "--resume"]) == 0
    clean = tmp_path / "clean"
    assert main(["train", "--config", str(config), "--out", str(clean), "--workers", "0"]) == 0
    a = load_file(str(out / "model" / "unet" / "model.safetensors"))
    b = load_file(str(clean / "model" / "unet" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_bf16_on_a_cpu_without_native_bf16_is_flagged(tmp_path):
    import torch

    from condiff.train.config import Precision
    from condiff.train.trainer import slow_bf16

    plain, native = tmp_path / "plain", tmp_path / "native"
    plain.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    native.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    cpu = torch.device("cpu")
    assert slow_bf16(cpu, Precision.BF16, str(plain))
    assert not slow_bf16(cpu, Precision.BF16, str(native))
    assert not slow_bf16(cpu, Precision.FP32, str(plain))
    assert not slow_bf16(torch.device("cuda"), Precision.BF16, str(plain))
    assert not slow_bf16(cpu, Precision.BF16, str(tmp_path / "none"))  # no /proc/cpuinfo (macOS, Windows): unknown


def test_the_learning_rate_warms_up_then_stays_or_follows_half_a_cosine_to_zero():
    from condiff.train.trainer import lr_at

    cfg = from_dict(TrainConfig, {"optim": {"steps": 110, "lr": 1e-3, "warmup_steps": 10}})
    assert [lr_at(cfg, s) for s in (0, 4, 9, 50, 109)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    cfg = from_dict(TrainConfig, {"optim": {"steps": 110, "lr": 1e-3, "warmup_steps": 10, "lr_schedule": "cosine"}})
    assert [lr_at(cfg, s) for s in (0, 9, 10, 60, 110)] == pytest.approx([1e-4, 1e-3, 1e-3, 5e-4, 0.0])
    assert lr_at(cfg, 35) == pytest.approx(1e-3 * (1 + np.cos(np.pi / 4)) / 2)
    with pytest.raises(ConfigError, match="'linear' is not one of"):
        from_dict(TrainConfig, {"optim": {"lr_schedule": "linear"}})
