"""A battery of bad command lines, each run as a user would (a fresh `condiff` process): every one must end with a
non-zero exit, no traceback, an error line that names the problem, and no output file.

    python benchmarks/bad_inputs.py --out docs/bad_inputs.json

The cases are the kinds the Reliability issue lists (unknown values, bad sizes, NaN and infinite floats, missing
files, corrupt checkpoints, unwritable outputs) and more; none of them is in tests/test_cli.py's parametrised list.
argparse's own refusals print their usage line first; the error is then the last line.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE32 = ROOT / "condiff" / "weights" / "base32"


def fixtures(tmp: Path) -> dict[str, Path]:
    """Broken inputs: a file where a folder is expected, corrupt and mismatched model folders, a non-image."""
    f = {"file": tmp / "afile", "notimage": tmp / "not_an_image.png", "badjson": tmp / "bad.json",
         "unknownkey": tmp / "unknown.json", "corrupt_config": tmp / "corrupt_config", "truncated": tmp / "truncated",
         "mismatched": tmp / "mismatched", "noconfig": tmp / "noconfig", "layout": tmp / "layout.json"}
    f["file"].write_text("a file, not a folder")
    f["notimage"].write_bytes(b"\x89PNG but not really")
    f["badjson"].write_text('{"optim": {"steps": 10,}')
    f["unknownkey"].write_text(json.dumps({"optim": {"stepz": 10}}))
    f["layout"].write_text(json.dumps([{"phrase": "a red circle", "box": [0.6, 0.1, 0.2, 0.5]}]))
    for name in ("corrupt_config", "truncated", "mismatched", "noconfig"):
        shutil.copytree(BASE32, f[name])
    (f["corrupt_config"] / "unet" / "config.json").write_text("{ not json")
    weights = f["truncated"] / "unet" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    shutil.copy(ROOT / "condiff" / "weights" / "kl_f4" / "model.safetensors", f["mismatched"] / "unet" / "model.safetensors")
    (f["noconfig"] / "unet" / "config.json").unlink()
    return f


def cases(f: dict[str, Path], out: Path) -> list[tuple[str, list[str]]]:
    g = ["generate", "a red circle", "--steps", "2"]
    o = ["--out", str(out)]
    return [
        ("empty prompt", ["generate", "", "--steps", "2", *o]),
        ("over-long prompt", ["generate", "a red circle " * 200, "--steps", "2", *o]),
        ("NaN guidance scale", [*g, "--guidance-scale", "nan", *o]),
        ("infinite guidance scale", [*g, "--guidance-scale", "inf", *o]),
        ("negative eta", [*g, "--eta", "-3", *o]),
        ("too many steps", [*g[:-1], "100000", *o]),
        ("steps not a number", [*g[:-1], "ten", *o]),
        ("unknown sampler", [*g, "--sampler", "plms", *o]),
        ("unknown schedule", [*g, "--schedule", "cosine", *o]),
        ("static threshold on a latent model", [*g, "--threshold", "static", *o]),
        ("negative seed", [*g, "--seed", "-5", *o]),
        ("zero images", [*g, "--num-images", "0", *o]),
        ("zero batch size", [*g, "--batch-size", "0", *o]),
        ("unsupported size", [*g, "--size", "100", *o]),
        ("NaN guidance rescale", [*g, "--guidance-rescale", "nan", *o]),
        ("output under a file", [*g, "--out", str(f["file"] / "a.png")]),
        ("output in an unwritable place", [*g, "--out", "/proc/condiff/a.png"]),
        ("missing model folder", [*g, "--model", "/nonexistent/model", *o]),
        ("a file as the model", [*g, "--model", str(f["file"]), *o]),
        ("corrupt component config", [*g, "--model", str(f["corrupt_config"]), *o]),
        ("missing component config", [*g, "--model", str(f["noconfig"]), *o]),
        ("truncated weights", [*g, "--model", str(f["truncated"]), *o]),
        ("weights of another network", [*g, "--model", str(f["mismatched"]), *o]),
        ("missing layout file", [*g, "--layout", "/nonexistent.json", *o]),
        ("box with x0 > x1", [*g, "--layout", str(f["layout"]), *o]),
        ("NaN box", [*g, "--boxes", '[{"phrase": "a red circle", "box": [NaN, 0.1, 0.5, 0.5]}]', *o]),
        ("box phrase not in the prompt", [*g, "--boxes", '[{"phrase": "a blue square", "box": [0.1, 0.1, 0.5, 0.5]}]', *o]),
        ("boxes not JSON", [*g, "--boxes", "[{phrase", *o]),
        ("missing config", ["train", "--config", "/nonexistent.json", "--out", str(out.parent / "run1")]),
        ("corrupt config JSON", ["train", "--config", str(f["badjson"]), "--out", str(out.parent / "run2")]),
        ("unknown config key", ["train", "--config", str(f["unknownkey"]), "--out", str(out.parent / "run3")]),
        ("missing data folder", ["train", "--config", str(ROOT / "configs" / "base32_cpu.json"), "--data",
                                 "/nonexistent/folder", "--out", str(out.parent / "run4")]),
        ("resume with nothing to resume", ["train", "--config", str(ROOT / "configs" / "base32_cpu.json"),
                                           "--out", str(out.parent / "run5"), "--resume"]),
        ("missing input image", ["edit", "img2img", "/nonexistent.png", "--prompt", "a red circle", *o]),
        ("input that is not an image", ["edit", "img2img", str(f["notimage"]), "--prompt", "a red circle", *o]),
        ("strength above 1", ["edit", "img2img", str(ROOT / "docs" / "bench_grid.png"),
                              "--prompt", "a red circle", "--strength", "1.5", *o]),
        ("inpaint box outside the image", ["edit", "inpaint", str(ROOT / "docs" / "bench_grid.png"), "--prompt",
                                           "a red circle", "--box", "0,0,99999,10", *o]),
        ("upscale factor 3", ["upscale", str(ROOT / "docs" / "bench_grid.png"), "--scale", "3", *o]),
        ("too many bench prompts", ["eval", "bench", "--prompts-per-category", "1000", "--out-dir",
                                    str(out.parent / "bench")]),
        ("layout of an empty prompt", ["layout", "", "--out", str(out)]),
    ]


def judge(proc: subprocess.CompletedProcess, out: Path) -> tuple[bool, str]:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    ok = (proc.returncode != 0 and "Traceback" not in proc.stderr and "error" in last.lower()
          and not out.exists() and len(last) < 400)
    return ok, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    f = fixtures(tmp)
    out = tmp / "out" / "result.png"
    rows = []
    for name, argv in cases(f, out):
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "condiff.cli", *argv], capture_output=True, text=True, timeout=300)
        ok, last = judge(proc, out)
        rows.append({"case": name, "ok": ok, "exit": proc.returncode, "seconds": round(time.time() - start, 1),
                     "error": last})
        print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {proc.returncode}: {last[:150]}", flush=True)
    passed = sum(r["ok"] for r in rows)
    print(f"{passed} of {len(rows)} bad command lines end in one error line, a non-zero exit and no output")
    if args.out:
        Path(args.out).write_text(json.dumps({"passed": passed, "cases": len(rows), "rows": rows}, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if passed == len(rows) else 1)


if __name__ == "__main__":
    main()
