import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from condiff.cli import main
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.catalogue import BASE32, DEFAULT_MODEL
from condiff.png import format_parameters, parse_parameters, read_parameters
from condiff.world.oracle import judge
from condiff.world.render import to_uint8


def test_parameters_text_round_trip():
    text = format_parameters("a red circle", "a blue square", {"Steps": 50, "Sampler": "DDIM", "CFG scale": 3.0,
                                                               "Seed": 7, "Size": "32x32"})
    assert text == ("a red circle\nNegative prompt: a blue square\n"
                    "Steps: 50, Sampler: DDIM, CFG scale: 3.0, Seed: 7, Size: 32x32")
    p = parse_parameters(text)
    assert p["prompt"] == "a red circle" and p["negative_prompt"] == "a blue square"
    assert p["Seed"] == "7" and p["CFG scale"] == "3.0" and p["Size"] == "32x32"


def test_generate_writes_pngs_with_parameters(tiny_model, tmp_path):
    out = tmp_path / "img.png"
    assert main(["generate", "a red circle", "two blue squares", "--model", str(tiny_model), "--steps", "3",
                 "--seed", "10", "--num-images", "2", "--negative-prompt", "a green circle",
                 "--out", str(out)]) == 0
    files = sorted(tmp_path.glob("img-*.png"))
    assert [f.name for f in files] == ["img-000.png", "img-001.png", "img-002.png", "img-003.png"]
    p = read_parameters(files[3])
    assert p["prompt"] == "two blue squares" and p["Seed"] == "13" and p["Steps"] == "3"
    assert p["negative_prompt"] == "a green circle" and p["Sampler"] == "DDIM"
    assert Image.open(files[0]).size == (16, 16)
    assert Image.open(out).size == (2 * 16, 2 * 16)  # the grid: a row per prompt, a column per image
    assert np.array_equal(np.asarray(Image.open(out))[16:, 16:], np.asarray(Image.open(files[3])))


def test_same_seed_same_image_whatever_the_batch(tiny_model, tmp_path):
    main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "4", "--seed", "5", "--num-images", "3",
          "--batch-size", "3", "--sampler", "ddpm", "--out", str(tmp_path / "batch.png")])
    main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "4", "--seed", "6",
          "--sampler", "ddpm", "--out", str(tmp_path / "single.png")])
    a = np.asarray(Image.open(tmp_path / "batch-001.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "single.png")).astype(int)
    assert np.abs(a - b).max() <= 1  # identical up to float summation order in batched convolutions


@pytest.mark.parametrize("argv,message", [
    (["generate", "a red unicorn", "--model", str(BASE32)], "unknown word 'unicorn'"),
    (["generate", "a red circle", "--model", "/nonexistent/model"], "missing model folder"),
    (["generate", "a red circle", "--steps", "0"], "steps: must be an integer between 1 and 1000"),
    (["train", "--config", "/nonexistent.json", "--out", "/tmp/x"], "missing file '/nonexistent.json'"),
])
def test_bad_input_gives_one_line_error_and_nonzero_exit(argv, message, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path / "o.png")] if argv[0] == "generate" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_shipped_default_model_draws_single_objects():
    """The shipped model, judged by the oracle: a smoke test of quality, not the benchmark."""
    pipe = Text2ImagePipeline.from_pretrained(DEFAULT_MODEL)
    prompts = ["a red circle", "a blue square", "a yellow triangle", "a large green circle"]
    images = to_uint8(pipe(prompts, [0, 1, 2, 3], pipe.defaults.replace(steps=20))).numpy()
    verdicts = [judge(px, p) for px, p in zip(images, prompts)]
    assert sum(v.correct for v in verdicts) >= 3, [v.reason for v in verdicts]


def test_eval_bench_writes_report_and_grid(tiny_model, tmp_path):
    out = tmp_path / "bench"
    assert main(["eval", "bench", "--model", str(tiny_model), "--prompts-per-category", "1", "--n-per-prompt", "2",
                 "--steps", "2", "--device", "cpu", "--out-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["table"]) == {"single", "counting", "two_objects", "position", "held_out", "overall"}
    assert len(report["samples"]) == 10 and all("reason" in s for s in report["samples"])
    assert Image.open(out / "grid.png").size[0] > 0


def test_export_fp16_round_trip(tiny_model, tmp_path):
    assert main(["export", str(tiny_model), str(tmp_path / "half"), "--fp16"]) == 0
    half = load_file(str(tmp_path / "half" / "unet" / "model.safetensors"))
    full = load_file(str(tiny_model / "unet" / "model.safetensors"))
    assert all(half[k].dtype == torch.float16 for k in half)
    assert all((half[k].float() - full[k]).abs().max() <= full[k].abs().max() * 1e-3 + 1e-7 for k in full)
    pipe = Text2ImagePipeline.from_pretrained(tmp_path / "half")  # loads back as float32
    assert next(pipe.unet.parameters()).dtype == torch.float32


def test_generate_with_every_option(tiny_model, tmp_path):
    out = tmp_path / "o.png"
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "3", "--sampler", "ddpm",
                 "--ddpm-variance", "large", "--threshold", "dynamic", "--threshold-percentile", "0.9",
                 "--out", str(out)]) == 0
    p = read_parameters(out)
    assert p["Sampler"] == "DDPM" and p["Threshold"] == "dynamic 0.9"
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "3", "--sampler", "heun",
                 "--schedule", "karras", "--out", str(out)]) == 0
    assert read_parameters(out)["Schedule type"] == "karras"


def test_bench_summary_separates_objects_from_relation():
    """Position accuracy splits into 'both objects right' and 'relation right given the objects' (oracle order)."""
    from condiff.eval.bench import summarize
    reasons = [None, None, "wrong relation: a red circle is not left of a blue square (dx=+0.30, dy=+0.01)",
               "missing 1 red circle (found red square: wrong colour or shape)"]
    records = [{"suite": "position", "correct": r is None, "reason": r or "ok"} for r in reasons]
    records += [{"suite": "single", "correct": True, "reason": "ok"}]
    table = summarize(records)
    assert table["position"]["accuracy"] == 0.5 and table["position"]["objects_right"] == 3
    assert table["position"]["relation_given_objects"] == pytest.approx(2 / 3)
    assert "relation_given_objects" not in table["single"]
    # no position image with both objects right: the share is undefined, and the report says null, not bare NaN
    import json

    from condiff.io import json_safe
    table = summarize([{"suite": "position", "correct": False, "reason": reasons[3]}])
    assert table["position"]["objects_right"] == 0
    assert json.loads(json.dumps(json_safe(table), allow_nan=False))["position"]["relation_given_objects"] is None


def test_seed_minus_one_draws_a_random_seed_and_reports_it(tiny_model, tmp_path, capsys):
    out = tmp_path / "r.png"
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "2", "--seed", "-1", "--out", str(out)]) == 0
    seed = int(read_parameters(out)["Seed"])
    assert f"seed: {seed}" in capsys.readouterr().err and seed >= 0
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--seed", "-2", "--out", str(out)]) == 2


@pytest.mark.parametrize("flag,value,message", [
    ("--guidance-scale", "nan", "guidance_scale: must be a finite number"),
    ("--guidance-scale", "inf", "guidance_scale: must be a finite number"),
    ("--eta", "-3", "eta: must be a finite number between 0 and 1"),
])
def test_non_finite_and_out_of_range_floats_are_refused_before_loading(flag, value, message, tmp_path, capsys):
    assert main(["generate", "a red circle", flag, value, "--model", "/nonexistent", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_an_unwritable_out_path_fails_before_sampling(tiny_model, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--out", str(tmp_path / "afile" / "a.png")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_the_bad_input_battery_ends_each_case_in_one_error_line(tmp_path, capsys, monkeypatch):
    """benchmarks/bad_inputs.py's 40 bad command lines, run in this process: exit 2, an error as the last line,
    nothing written. (The benchmark runs them as fresh processes, which also shows that none prints a traceback.)"""
    from pathlib import Path as P

    monkeypatch.syspath_prepend(str(P(__file__).parents[1] / "benchmarks"))
    from bad_inputs import cases, fixtures

    out = tmp_path / "out" / "result.png"
    bad = []
    for name, argv in cases(fixtures(tmp_path), out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own refusals
            code = e.code
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        if code != 2 or not err or "error" not in err[-1] or out.exists():
            bad.append((name, code, err[-1:] if err else None))
    assert not bad, bad
