"""schemathesis against a running `condiff serve`: every check of `st run --checks all`, on every API operation.

    python benchmarks/api_fuzz.py --model RUN/model --max-examples 300 --out docs/api_fuzz.json

Starts `condiff serve --model MODEL` on a free loopback port as its own process, waits for it, runs schemathesis
(its coverage and fuzzing phases: negative data, schema-valid data, undeclared methods, response schemas and
status codes, 5xx) with benchmarks/schemathesis.toml, and stops the server with SIGTERM. A small model keeps the
valid requests that really generate cheap; the API layer under test is the same for every model. The report
holds schemathesis's summary lines and the counts of generated and failed cases; the exit status is schemathesis's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CONFIG = Path(__file__).with_name("schemathesis.toml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int, extra: list[str] = ()) -> subprocess.Popen:
    """`condiff serve` in its own process, returned once GET /api/samplers answers."""
    cmd = [sys.executable, "-m", "condiff.cli", "serve", "--port", str(port), *(["--model", model] if model else []),
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"condiff serve exited with {proc.returncode}: {proc.stderr.read()[-500:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/samplers", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("condiff serve did not answer within 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_schemathesis(port: int, max_examples: int, seed: int) -> tuple[int, str]:
    cmd = ["st", "--config-file", str(CONFIG), "run", f"http://127.0.0.1:{port}/api/openapi.json", "--checks", "all",
           "--max-examples", str(max_examples), "--seed", str(seed), "--request-timeout", "120", "--no-color"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"))
    return out.returncode, out.stdout + out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder to serve (default: the shipped default)")
    ap.add_argument("--max-examples", type=int, default=100, help="schemathesis examples per operation and phase")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the report as JSON here")
    args = ap.parse_args()
    port = free_port()
    server = start_server(args.model, port)
    try:
        code, text = run_schemathesis(port, args.max_examples, args.seed)
    finally:
        stop_server(server)
    counts = re.search(r"(\d+) generated, (.*)", text)
    summary = text[text.find("SUMMARY"):] if "SUMMARY" in text else text[-3000:]
    report = {"model": args.model or "shipped default", "max_examples": args.max_examples, "seed": args.seed,
              "exit_status": code, "generated": int(counts.group(1)) if counts else None,
              "result": counts.group(2).strip() if counts else None, "summary": summary.strip().splitlines()}
    print(summary)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
