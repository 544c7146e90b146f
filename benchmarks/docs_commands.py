"""Run every fenced `condiff` command of the README and docs/ verbatim and report each one, so that the documents
and the code cannot drift apart.

    python benchmarks/docs_commands.py --out docs/docs_commands.json             # every command (long: see below)
    python benchmarks/docs_commands.py --only "edit " --only "generate "         # the lines that contain either
    python benchmarks/docs_commands.py --list                                    # what would run, nothing run

Each command line runs through bash, exactly as written, in one scratch folder shared by all of them in document
order (README first), so files made by one command (`in.png`, `x_T.safetensors`) are the inputs of the next. The
scratch folder holds a copy of `configs/` and of the shipped weights (`condiff/weights/...` paths, and `export`
commands that write there, touch the copy, never the package).

Outcomes:
- **ran**: exited 0 within `--limit` seconds.
- **started**: a command that runs until stopped (`condiff serve`, and `condiff train` or a long `condiff eval
  bench|sweep` unless `--full`) was
  stopped after it showed it works: the server answered HTTP; the training ran `--train-seconds` and at least one
  step, and on SIGTERM to its process group exited 143 with a checkpoint saved. `--full` runs trainings to the end (hours on a CPU).
- **waits**: its input is the output of a training that was stopped early (`runs/NAME/model`); `--full` runs it.
- **skipped**: it cannot run on this machine (`accelerate launch --num_processes 8` without 8 GPUs), or it is the
  README's set-up command (`pip install -e .`; `--setup` runs it, in the repository root).
- **failed**: anything else, with the last line it printed. An edit recipe also fails when its image does not
  show what the command promises, as the exact oracle reads it: img2img and inpaint must draw `--prompt`,
  DiffusionCLIP's `--apply` its `--target`, and an edit by inversion (`generate --from-noise`) its prompt.

Paths in the documents that stand for the user's own files are given stand-ins before the commands run:
Stable Diffusion folders and single files (SD1 CLIP and SD2 OpenCLIP layouts) are diffusers' tiny fast-test model (built by diffusers itself, as the
tests build it; needs `.[test]`), `path/to/clip-vit-large-patch14` a tiny transformers CLIPModel, and `path/to/folder` is an image folder of 24 shapes scenes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = re.compile(r"^(pip install -e \. && )?(timeout [^c]*)?(condiff|torchrun .*-m condiff\.cli|accelerate launch"
                      r" .*-m condiff\.cli|python -c) ")
STEP = re.compile(r"\b[1-9]\d*/\d+ \[")  # tqdm's "12/2000 [": a step done
BAR = re.compile(r"\b(\d+/\d+) \[")  # a tqdm bar: the options were good, the model loaded, the work began
REFUSAL = re.compile(r"#\s*(condiff: error: .*?)(\.\.\.)?$")  # a documented refusal: `cmd   # condiff: error: ...`
SHELLS = {"", "bash", "sh", "shell", "console"}


@dataclass
class Command:
    text: str
    where: str  # file:line of its first appearance


@dataclass
class Result:
    text: str
    where: str
    outcome: str
    seconds: float
    detail: str = ""


def command_key(text: str) -> str:
    """The command without its trailing comment: the same command under two comments runs once."""
    try:
        return shlex.join(shlex.split(text, comments=True))
    except ValueError:
        return text


def documented_commands(root: Path = ROOT) -> list[Command]:
    """The condiff command lines of every fenced shell block, README first, each once (first appearance)."""
    seen: dict[str, Command] = {}
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        lines = doc.read_text().splitlines()
        fence = None
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                fence = None if fence is not None else line[3:].strip()
                i += 1
                continue
            start = i
            while line.endswith("\\") and i + 1 < len(lines):  # a continued line is one command
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            text = line.strip().removeprefix("$ ")
            if fence in SHELLS and PROGRAMS.match(text) and command_key(text) not in seen:
                seen[command_key(text)] = Command(text, f"{doc.relative_to(root)}:{start + 1}")
            i += 1
    return list(seen.values())


def tiny_stable_diffusion(scratch: Path) -> dict[str, Path]:
    """diffusers' fast-test SD as a folder and as an original-layout single file, at the documents' placeholders."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_clip_judge import tiny_clip
    from test_stable_diffusion import folder_to_single_file, tiny_sd

    folder = tiny_sd(scratch / "path" / "to" / "sd-folder", conventional=True, f8=True)
    shutil.copytree(folder, scratch / "path" / "to" / "sd-diffusers-folder")
    single = folder_to_single_file(folder, scratch / "v1-5.safetensors")
    shutil.copy(single, scratch / "v1-5-pruned-emaonly.safetensors")
    sd2 = tiny_sd(scratch / "path" / "to" / "sd2-folder", v=True, conventional=True, f8=True)
    folder_to_single_file(sd2, scratch / "sd2-768-v.safetensors", sd2=True)
    tiny_clip(scratch / "path" / "to" / "clip-vit-large-patch14")
    return {"sd": folder, "single": single}


def own_images(folder: Path, n: int = 24) -> None:
    """Captioned shapes scenes in diffusers' imagefolder format (metadata.jsonl with file_name and text)."""
    import random

    from PIL import Image

    from condiff.world.grammar import Category, format_caption, sample_prompt
    from condiff.world.render import layout, render, to_uint8

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for k in range(n):
        spec = sample_prompt(rng, list(Category)[k % len(Category)])
        pixels = to_uint8(render([layout(spec, rng)], 64))[0].numpy()
        Image.fromarray(pixels).save(folder / f"{k:03d}.png")
        rows.append(json.dumps({"file_name": f"{k:03d}.png", "text": format_caption(spec)}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def scratch_folder(scratch: Path) -> None:
    shutil.copytree(ROOT / "configs", scratch / "configs")
    shutil.copytree(ROOT / "condiff" / "weights", scratch / "condiff" / "weights")
    (scratch / "docs").mkdir()
    own_images(scratch / "path" / "to" / "folder")
    tiny_stable_diffusion(scratch)


def kind(text: str) -> str:
    if text.startswith("pip install"):
        return "setup"
    if "accelerate launch" in text:
        return "accelerate"
    if re.search(r"(condiff|-m condiff\.cli) serve\b", text):
        return "serve"
    if re.search(r"(condiff|-m condiff\.cli) train\b", text) and not text.startswith("timeout"):
        return "train"
    if re.search(r"condiff eval (bench|sweep)\b", text):
        return "long"  # hundreds of images: shown to progress, then stopped, unless --full
    return "run"


def out_folder(text: str) -> str | None:
    m = re.search(r"--out (\S+)", text)
    return m.group(1) if m else None


def last_line(log: str) -> str:
    lines = [ln.strip() for ln in re.split(r"[\r\n]", log) if ln.strip()]
    return lines[-1][:300] if lines else ""


def stop_group(proc: subprocess.Popen, sig=signal.SIGTERM, wait: float = 120) -> int:
    os.killpg(proc.pid, sig)
    try:
        return proc.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def run_watched(text: str, cwd: Path, env: dict, until, limit: float):
    """Run text with its output in a log until it exits, `until(seconds, log text)` holds or `limit` passes. Returns
    (the process, the log): the process still runs unless it exited."""
    log = cwd / ".watched.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < limit and not until(time.time() - t0, log.read_text()):
        time.sleep(1)
    return proc, log


def exited(proc: subprocess.Popen, log: Path) -> tuple[str, str]:
    return ("ran", "") if proc.returncode == 0 else ("failed", f"exit {proc.returncode}: {last_line(log.read_text())}")


def run_training(text: str, cwd: Path, env: dict, seconds: float, full: bool, limit: float) -> tuple[str, str]:
    """Until --train-seconds have passed and a step was logged, then SIGTERM to the group, as `timeout` sends."""
    proc, log = run_watched(text, cwd, env, lambda t, out: not full and t >= seconds and STEP.search(out), limit)
    if proc.poll() is not None:
        return exited(proc, log)
    if full:
        stop_group(proc)
        return "failed", f"still training after --limit {limit:.0f} s"
    code = stop_group(proc, wait=limit)
    out = log.read_text()
    folder = out_folder(text)
    saved = folder is not None and any((cwd / folder).glob("checkpoints/*"))
    steps = re.findall(r"(\d+)/\d+ \[", out)
    # torchrun's agent answers SIGTERM with its own SignalException and exit 1, after its workers saved and exited 143
    launched = text.startswith("torchrun") and code == 1 and "SignalException" in last_line(out)
    if (code == 143 or launched) and saved and out.count("interrupted: saved step") == 1:
        return "started", f"step {steps[-1] if steps else '?'} after {seconds:.0f} s; SIGTERM saved a checkpoint"
    return "failed", f"exit {code} on SIGTERM, checkpoint saved: {saved}: {last_line(out)}"


def run_started(text: str, cwd: Path, env: dict, seconds: float, limit: float) -> tuple[str, str]:
    """A long evaluation: until --train-seconds have passed and its progress bar shows, then SIGTERM to the group."""
    proc, log = run_watched(text, cwd, env, lambda t, out: t >= seconds and BAR.search(out), limit)
    if proc.poll() is not None:
        return exited(proc, log)
    stop_group(proc)
    done = BAR.findall(log.read_text())
    if not done:
        return "failed", f"no progress bar in {limit:.0f} s"
    return "started", (f"generating ({done[-1]} batches) after {seconds:.0f} s, then stopped (--full runs it to the "
                       "end)")


def run_server(text: str, cwd: Path, env: dict, limit: float) -> tuple[str, str]:
    port = re.search(r"--port (\d+)", text)
    url = f"http://127.0.0.1:{port.group(1) if port else 7860}/"
    proc = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, text=True)
    t0 = time.time()
    try:
        while time.time() - t0 < limit and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return "started", f"answered {r.status} at {url} after {time.time() - t0:.0f} s"
            except OSError:
                time.sleep(1)
        return "failed", last_line(proc.stderr.read() if proc.poll() is not None else "no answer in time")
    finally:
        if proc.poll() is None:
            stop_group(proc)


def judged(text: str, code: int, last: str) -> tuple[str, str]:
    """Exit 0, or for a documented refusal a non-zero exit with the documented error line."""
    if (refusal := REFUSAL.search(text)) is None:
        return ("ran", "") if code == 0 else ("failed", f"exit {code}: {last}")
    expected = refusal.group(1).rstrip(" ;")
    if code != 0 and last.startswith(expected):
        return "ran", f"refused as documented (exit {code})"
    return "failed", f"expected '{expected}...', got exit {code}: {last}"


def promised(text: str) -> tuple[str, str] | None:
    """(image, caption) an edit recipe promises: img2img and inpaint draw --prompt, DiffusionCLIP's --apply draws
    --target, and an edit by inversion (`generate --from-noise`) draws its prompt; judged by the exact oracle."""
    words = shlex.split(text, comments=True)
    opts = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
    if words[1:3] in (["edit", "img2img"], ["edit", "inpaint"]) and "--prompt" in opts:
        return opts.get("--out", f"{words[2]}.png"), opts["--prompt"]
    if words[1:3] == ["edit", "clip"] and "--apply" in opts:
        return opts.get("--out", "diffusionclip.png"), opts["--target"]
    if words[1] == "generate" and "--from-noise" in opts:
        return opts.get("--out", "out.png"), words[2]
    return None


def oracle_says(text: str, cwd: Path) -> str | None:
    """None when the recipe's image shows what it promises, else the oracle's reason."""
    import numpy as np
    from PIL import Image

    from condiff.world.oracle import judge

    if (promise := promised(text)) is None:
        return None
    image, caption = promise
    verdict = judge(np.asarray(Image.open(cwd / image).convert("RGB")), caption)
    return None if verdict.correct else f"{image} is not '{caption}': {verdict.reason}"


def pending_outputs(cmds: list[Command]) -> set[str]:
    """The runs/NAME folders that documented trainings make, and (transitively) the outputs of documented commands
    that read one of them: `compose` of a trained model, `export` of that composition."""
    pending = {out_folder(c.text) for c in cmds if kind(c.text) == "train"} - {None}
    grew = True
    while grew:
        grew = False
        for c in cmds:
            out = out_folder(c.text)
            reads = set(re.findall(r"(runs/[\w.-]+)", c.text)) - {out}
            if out is not None and out.startswith("runs/") and out not in pending and reads & pending:
                pending.add(out)
                grew = True
    return pending


def waits_on(text: str, cwd: Path, pending: set[str]) -> str | None:
    """A runs/NAME input that is not there yet because the documented command making it (a training, or a command
    that itself waits) has not run to its end."""
    for path in re.findall(r"(runs/[\w.-]+)", text):
        ready = (cwd / path / "model").exists() or (cwd / path / "config.json").exists()
        if path in pending and not ready and path != out_folder(text):
            return path
    return None


def run_one(cmd: Command, cwd: Path, env: dict, a, pending: set[str]) -> Result:
    t0 = time.time()
    k = kind(cmd.text)
    if k == "setup" and not a.setup:
        outcome, detail = "skipped", "the README's set-up command (--setup runs it in the repository root)"
    elif k == "accelerate" and _gpus() < (need := int(re.search(r"--num_processes (\d+)", cmd.text).group(1))):
        outcome, detail = "skipped", f"needs {need} GPUs"
    elif (dep := waits_on(cmd.text, cwd, pending)) is not None:
        outcome, detail = "waits", f"on {dep}, made by a documented training that has not run to its end (--full)"
        if (folder := out_folder(cmd.text)) is not None:
            pending.add(folder)
    elif k == "train":
        outcome, detail = run_training(cmd.text, cwd, env, a.train_seconds, a.full, a.limit)
    elif k == "long" and not a.full:
        outcome, detail = run_started(cmd.text, cwd, env, a.train_seconds, a.limit)
    elif k == "serve":
        outcome, detail = run_server(cmd.text, cwd, env, a.limit)
    else:
        where = ROOT if k == "setup" else cwd
        try:
            p = subprocess.run(["bash", "-c", cmd.text], cwd=where, env=env, capture_output=True, text=True,
                               timeout=a.limit, start_new_session=True)
            outcome, detail = judged(cmd.text, p.returncode, last_line(p.stderr + p.stdout))
            if outcome == "ran" and (wrong := oracle_says(cmd.text, cwd)) is not None:
                outcome, detail = "failed", wrong
        except subprocess.TimeoutExpired:
            outcome, detail = "failed", f"over --limit {a.limit:.0f} s"
    return Result(cmd.text, cmd.where, outcome, round(time.time() - t0, 1), detail)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="run the lines containing this text (repeatable)")
    ap.add_argument("--exclude", action="append", default=[], help="leave out the lines containing this text")
    ap.add_argument("--list", action="store_true", help="list the commands and exit")
    ap.add_argument("--full", action="store_true", help="run trainings to the end, and what waits on them")
    ap.add_argument("--setup", action="store_true", help="also run the README's pip set-up command")
    ap.add_argument("--train-seconds", type=float, default=60, help="how long a training runs before SIGTERM")
    ap.add_argument("--limit", type=float, default=1800, help="seconds one command may take")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N commands (to go on after a stop)")
    ap.add_argument("--scratch", type=Path, help="scratch folder (default: a new temporary one, removed after)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args(argv)
    cmds = [c for c in documented_commands() if (not a.only or any(s in c.text for s in a.only))
            and not any(s in c.text for s in a.exclude)]
    cmds = cmds[a.skip:]
    if a.list:
        for c in cmds:
            print(f"{c.where:28s} {c.text}")
        return 0
    scratch = a.scratch or Path(tempfile.mkdtemp(prefix="condiff-docs-"))
    scratch.mkdir(parents=True, exist_ok=True)
    if not (scratch / "configs").exists():
        scratch_folder(scratch)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    pending = pending_outputs(documented_commands())
    results, counts = [], dict.fromkeys(("ran", "started", "waits", "skipped", "failed"), 0)
    for c in cmds:
        r = run_one(c, scratch, env, a, pending)
        results.append(r)
        print(f"{r.outcome:8s} {r.seconds:7.1f} s  {r.where:28s} {r.text[:100]}" + (f"\n{'':19s}{r.detail}"
                                                                                     if r.detail else ""), flush=True)
        counts = {o: sum(r.outcome == o for r in results) for o in ("ran", "started", "waits", "skipped", "failed")}
        if a.out:  # after every command: a run stopped part-way keeps what it found
            a.out.write_text(json.dumps({"counts": counts, "results": [asdict(r) for r in results]}, indent=1) + "\n")
    print(", ".join(f"{n} {o}" for o, n in counts.items()) + f" of {len(results)} commands")
    if a.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
