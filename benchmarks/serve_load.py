"""condiff serve under concurrent load: N simultaneous POST /api/txt2img requests against the shipped model.

    python benchmarks/serve_load.py --requests 20 --steps 25

Starts the real app (uvicorn, loopback), fires all requests at once from N threads, and reports every status
code and the latency distribution. Generation is serialised by the service's lock, so latency grows linearly
with queue position; the ratio of the slowest latency to one request's service time says how well it queues.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

from condiff.ui.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", default="docs/serve_load.json")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}/api/txt2img"
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/samplers", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)

    def one(i: int):
        start = time.perf_counter()
        r = httpx.post(url, json={"prompt": "a red circle to the left of a blue square", "steps": args.steps, "seed": i},
                       timeout=600)
        return r.status_code, time.perf_counter() - start

    single = one(10_000)[1]  # one request alone: the service time
    start = time.perf_counter()
    with ThreadPoolExecutor(args.requests) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - start
    codes = [c for c, _ in results]
    lat = sorted(t for _, t in results)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    report = {"requests": args.requests, "steps": args.steps, "status_codes": {str(c): codes.count(c) for c in set(codes)},
              "single_request_s": single, "wall_s": wall, "latency_s": {"min": lat[0], "p50": statistics.median(lat),
                                                                          "p90": q(0.9), "max": lat[-1]},
              "throughput_req_s": args.requests / wall}
    print(json.dumps(report, indent=1))
    print(f"max latency / (requests x single request) = {lat[-1] / (args.requests * single):.2f}  (1.0: perfect queueing)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    server.should_exit = True


if __name__ == "__main__":
    main()
