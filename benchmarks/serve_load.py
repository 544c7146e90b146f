"""condiff serve under concurrent load: N simultaneous POST /api/txt2img clients against `condiff serve`.

    python benchmarks/serve_load.py --clients 100 --steps 25 --out docs/serve_load.json

Starts `condiff serve` (the shipped default unless --model) as its own process on loopback, with its default
limits (--max-queue 8, --max-wait 25 s, --max-work 4,000,000) unless given. Then:
1. one request alone: the service time of one image;
2. N clients at once, one request each: every status code, the p50/p99 latency of the answered (200) and of the
   refused (429/503) requests, throughput, and the server's peak resident memory (VmHWM of its process);
3. the heaviest request the work limit allows (16 images x the steps that fit, Heun), and 1 s later one small
   request: how long the small one waits for its answer (a 200, or a 429/503 with Retry-After, within max-wait).
The server is then stopped with SIGTERM; the seconds it takes to exit are reported too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from api_fuzz import free_port, start_server  # noqa: E402

PROMPT = "a red circle to the left of a blue square"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def quantiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    return {"n": len(xs), "min": xs[0], "p50": statistics.median(xs), "p99": q(0.99), "max": xs[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--model", help="model folder (default: the shipped default)")
    ap.add_argument("--max-work", type=int, default=4_000_000)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--max-wait", type=float, default=25.0)
    ap.add_argument("--out", default="docs/serve_load.json")
    args = ap.parse_args()
    port = free_port()
    server = start_server(args.model, port, ["--max-work", str(args.max_work), "--max-queue", str(args.max_queue),
                                             "--max-wait", str(args.max_wait)])
    url = f"http://127.0.0.1:{port}/api/txt2img"
    resolution = 64

    def one(body: dict) -> tuple[int, float, str | None]:
        start = time.perf_counter()
        r = httpx.post(url, json=body, timeout=900)
        return r.status_code, time.perf_counter() - start, r.headers.get("retry-after")

    try:
        code, single, _ = one({"prompt": PROMPT, "steps": args.steps, "seed": 10_000})
        assert code == 200, code
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, [{"prompt": PROMPT, "steps": args.steps, "seed": i} for i in range(args.clients)]))
        wall = time.perf_counter() - start
        codes = [c for c, _, _ in results]
        refused = [r for r in results if r[0] in (429, 503)]

        heavy_steps = args.max_work // (16 * resolution ** 2)
        heavy = {"prompt": PROMPT, "steps": heavy_steps, "num_images": 16, "sampler": "heun", "seed": 1}
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("heavy", one(heavy)))
        t.start()
        time.sleep(1.0)
        small = one({"prompt": PROMPT, "steps": 5, "seed": 2})
        t.join()
        report = {
            "clients": args.clients, "steps": args.steps, "limits": {"max_queue": args.max_queue,
                                                                     "max_wait_s": args.max_wait,
                                                                     "max_work": args.max_work},
            "single_request_s": single, "wall_s": wall, "throughput_answered_per_s": codes.count(200) / wall,
            "status_codes": {str(c): codes.count(c) for c in sorted(set(codes))},
            "server_errors_5xx_other_than_503": sum(500 <= c < 600 and c != 503 for c in codes),
            "all_refusals_have_retry_after": all(ra is not None for _, _, ra in refused),
            "latency_answered_s": quantiles([s for c, s, _ in results if c == 200]),
            "latency_refused_s": quantiles([s for c, s, _ in refused]),
            "heavy_request": {"body": heavy, "status": out["heavy"][0], "seconds": out["heavy"][1]},
            "small_request_during_heavy": {"status": small[0], "seconds": small[1], "retry_after": small[2]},
        }
        report["server_peak_rss_mb"] = peak_rss_mb(server.pid)
    finally:
        stop = time.perf_counter()
        server.terminate()
        server.wait(30)
    report["sigterm_exit_s"] = time.perf_counter() - stop
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
