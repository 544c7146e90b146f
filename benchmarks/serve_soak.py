"""condiff serve soak: mixed requests (txt2img, img2img, variations, bad payloads) from many clients for minutes.

    python benchmarks/serve_soak.py --minutes 10 --requests 200 --clients 20 --steps 10 --out docs/serve_soak.json --plot docs/serve_soak.png

Starts `condiff serve` (the shipped default layout64 unless --model) as its own process on loopback, with its default
limits (--max-queue 8, --max-wait 25 s, --max-work 4,000,000) unless given. The requests are dealt to the clients
from a seeded shuffle of the mix (50% txt2img, 20% img2img, 15% variations, 15% bad payloads); each client (a thread
with its own httpx connection) draws its send times uniformly over --minutes and sleeps until each one (its think
time), so the load spans the duration. The layout64 server answers /api/variations through the shipped unCLIP decoder
(unclip64 with clip64, loaded on the first variations request), so every valid kind can get a 200. The bad payloads
cycle through BAD_CASES (invalid JSON, wrong types, missing and extra fields, steps 0, a huge num_images, an unknown
sampler, an oversized body, an image that is not base64 or not an image, eta 0): each must get a 4xx. 429 and 503
(queue full, no turn within max-wait; with Retry-After) are the server's allowed refusals, counted apart; a refused
request is retried once after its Retry-After. A sampler thread reads the server's VmRSS every second.

The report: status codes per kind and per bad case, the 5xx other than 503 (must be 0), p50/p95/max latency per kind
of the answered (200) requests, per-client counts (answered, refused, worst latency) with min/max answered and Jain's
fairness index, the RSS series with its start/end/peak and its slope over the second half (MB per minute), the wall
time, the seconds the server takes to exit after SIGTERM, and tracebacks in its stderr. --plot draws the RSS and every
request's latency over time. The exit status is 1 if any 5xx other than 503 came back or the server died, else 0.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import httpx
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from api_fuzz import free_port, start_server, stop_server  # noqa: E402
from serve_load import peak_rss_mb  # noqa: E402

PROMPTS = ["a red circle to the left of a blue square", "a green triangle above a yellow circle",
           "two blue squares", "a purple circle below a red triangle"]
MIX = {"txt2img": 0.50, "img2img": 0.20, "variations": 0.15, "bad": 0.15}
REFUSED = (429, 503)
TIMEOUT = 300.0  # seconds one request may take before the client gives up (a transport error, status 0)
OVERSIZED = 33 * 2 ** 20  # bytes: past the API's 32 MiB body limit, refused (413) before the body is read
JSON = {"content-type": "application/json"}
BAD_CASES: dict[str, tuple[str, dict]] = {  # name -> (path, httpx.post arguments); each must get a 4xx
    "invalid_json": ("/api/txt2img", {"content": b'{"prompt": "a red circle", "steps": 10,', "headers": JSON}),
    "wrong_type": ("/api/txt2img", {"json": {"prompt": "a red circle", "steps": "ten"}}),
    "steps_0": ("/api/txt2img", {"json": {"prompt": "a red circle", "steps": 0}}),
    "num_images_huge": ("/api/txt2img", {"json": {"prompt": "a red circle", "num_images": 10 ** 6}}),
    "unknown_sampler": ("/api/txt2img", {"json": {"prompt": "a red circle", "sampler": "warp_drive"}}),
    "extra_field": ("/api/txt2img", {"json": {"prompt": "a red circle", "stepz": 10}}),
    "oversized_body": ("/api/txt2img", {"content": b" " * OVERSIZED, "headers": JSON}),
    "missing_image": ("/api/img2img", {"json": {"prompt": "a red circle"}}),
    "not_base64": ("/api/img2img", {"json": {"prompt": "a red circle", "image": "!!not base64!!"}}),
    "not_an_image": ("/api/img2img", {"json": {"prompt": "a red circle",
                                               "image": base64.b64encode(b"GIF89a but not really").decode()}}),
    "variations_eta_0": ("/api/variations", {"json": {"image": "iVBORw0KGgo=", "eta": 0}}),
}


@dataclass
class Attempt:
    """One HTTP request: status 0 is a transport error (no answer); t is when it ended, in seconds since the start."""
    client: int
    kind: str
    case: str | None  # the bad payload's name
    retry: bool
    status: int
    seconds: float
    t: float
    error: str | None = None


def plan(requests: int, clients: int, rng: random.Random) -> list[list[tuple[str, str | None]]]:
    """Each client's (kind, bad case) list: the mix's counts (largest remainders), shuffled and dealt round-robin."""
    exact = {kind: share * requests for kind, share in MIX.items()}
    counts = {kind: int(x) for kind, x in exact.items()}
    for kind in sorted(exact, key=lambda k: counts[k] - exact[k])[:requests - sum(counts.values())]:
        counts[kind] += 1
    kinds = [kind for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    cases = iter(list(BAD_CASES) * requests)
    items = [(kind, next(cases) if kind == "bad" else None) for kind in kinds]
    return [items[c::clients] for c in range(clients)]


def input_image(rng: random.Random) -> str:
    """Base64 PNG of a random shape on a random background, of a random side (the server resizes it)."""
    side = rng.choice([48, 64, 96, 128])
    colour = lambda: tuple(rng.randrange(256) for _ in range(3))
    im = Image.new("RGB", (side, side), colour())
    x0, y0 = rng.randrange(side // 2), rng.randrange(side // 2)
    ImageDraw.Draw(im).ellipse([x0, y0, x0 + side // 3, y0 + side // 3], fill=colour())
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def request_for(kind: str, case: str | None, rng: random.Random, steps: int) -> tuple[str, dict]:
    """(path, httpx.post arguments) of one request of kind; a bad one is BAD_CASES[case]."""
    seed = rng.randrange(10 ** 6)
    if kind == "txt2img":
        return "/api/txt2img", {"json": {"prompt": rng.choice(PROMPTS), "steps": steps, "seed": seed,
                                         "sampler": rng.choice(["ddim", "euler", "dpmpp_2m"]),
                                         "num_images": rng.choice([1, 1, 2])}}
    if kind == "img2img":
        return "/api/img2img", {"json": {"prompt": rng.choice(PROMPTS), "image": input_image(rng), "steps": steps,
                                         "seed": seed, "strength": round(rng.uniform(0.4, 0.9), 2)}}
    if kind == "variations":
        return "/api/variations", {"json": {"image": input_image(rng), "steps": steps, "seed": seed, "num_images": 1,
                                            "candidates": 1}}
    return BAD_CASES[case]


def send(http: httpx.Client, path: str, kwargs: dict) -> tuple[int, float, str | None, str | None]:
    """(status, seconds, Retry-After, transport error) of one POST; status 0 when no answer came."""
    start = time.monotonic()
    try:
        r = http.post(path, **kwargs)
        return r.status_code, time.monotonic() - start, r.headers.get("retry-after"), None
    except httpx.HTTPError as e:
        return 0, time.monotonic() - start, None, f"{type(e).__name__}: {e}"[:200]


def run_client(client: int, items: list[tuple[str, str | None]], base_url: str, duration: float, steps: int,
               seed: int, t0: float, attempts: list[Attempt]) -> None:
    """Send items at send times drawn uniformly over duration; retry a 429/503 once after its Retry-After."""
    rng = random.Random(seed * 1_000 + client)
    times = sorted(rng.uniform(0, duration) for _ in items)
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
        for (kind, case), at in zip(items, times):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            path, kwargs = request_for(kind, case, rng, steps)
            for retry in (False, True):
                status, seconds, retry_after, error = send(http, path, kwargs)
                attempts.append(Attempt(client, kind, case, retry, status, seconds, time.monotonic() - t0, error))
                if status not in REFUSED or retry:
                    break
                time.sleep(float(retry_after or 1))


def rss_mb(pid: int) -> float | None:
    """The process's resident memory (VmRSS) in MB; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith("VmRSS:"))


def sample_rss(pid: int, t0: float, stop: threading.Event, series: list[tuple[float, float]]) -> None:
    """(seconds since t0, RSS MB) every second until stop is set or the process is gone."""
    while not stop.is_set() and (mb := rss_mb(pid)) is not None:
        series.append((round(time.monotonic() - t0, 1), round(mb, 1)))
        stop.wait(1.0)


def drain(stream: IO[str], lines: list[str]) -> None:
    """Keep the server's stderr pipe from filling up; its lines are kept for the report."""
    for line in stream:
        lines.append(line.rstrip("\n"))


def latency(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    return {"n": len(xs), "p50": round(statistics.median(xs), 3), "p95": round(p95, 3), "max": round(xs[-1], 3)}


def jain(xs: list[float]) -> float | None:
    """Jain's fairness index: 1 when all are equal, 1/n when one gets everything."""
    return round(sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)), 3) if any(xs) else None


def memory(series: list[tuple[float, float]]) -> dict:
    """Start/end/peak RSS and the least-squares slope (MB per minute) over the second half of the run."""
    mbs = [mb for _, mb in series]
    half = [(t / 60, mb) for t, mb in series if t >= series[-1][0] / 2]
    slope = statistics.linear_regression(*zip(*half)).slope if len(half) >= 2 else None
    return {"start_mb": mbs[0], "end_mb": mbs[-1], "peak_mb": max(mbs), "samples": len(series),
            "second_half_slope_mb_per_min": None if slope is None else round(slope, 3)}


def per_client(attempts: list[Attempt], plans: list[list[tuple[str, str | None]]]) -> list[dict]:
    """Each client's valid requests, answered (200), refused (429/503) and worst latency over its valid attempts."""
    rows = []
    for c, items in enumerate(plans):
        mine = [a for a in attempts if a.client == c and a.kind != "bad"]
        valid = sum(kind != "bad" for kind, _ in items)
        answered = sum(a.status == 200 for a in mine)
        rows.append({"client": c, "requests": len(items), "valid": valid, "answered": answered,
                     "refused": sum(a.status in REFUSED for a in mine),
                     "answered_share": round(answered / valid, 3) if valid else None,
                     "worst_s": round(max((a.seconds for a in mine), default=0.0), 3)})
    return rows


def fairness(clients: list[dict]) -> dict:
    answered = [c["answered"] for c in clients]
    shares = [c["answered_share"] for c in clients if c["answered_share"] is not None]
    return {"answered_min": min(answered), "answered_max": max(answered), "jain_answered": jain(answered),
            "jain_answered_share": jain(shares),
            "starved_clients": [c["client"] for c in clients if c["valid"] and not c["answered"]]}


def counts(statuses: list[int]) -> dict[str, int]:
    return {str(s): statuses.count(s) for s in sorted(set(statuses))}


def summarize(attempts: list[Attempt]) -> dict:
    kinds = list(MIX)
    server_errors = [a for a in attempts if 500 <= a.status < 600 and a.status not in REFUSED]
    return {
        "status_codes": {k: counts([a.status for a in attempts if a.kind == k]) for k in kinds},
        "bad_cases": {case: counts([a.status for a in attempts if a.case == case]) for case in BAD_CASES},
        "server_errors_5xx": len(server_errors),
        "server_error_requests": [asdict(a) for a in server_errors],
        "bad_payloads_not_4xx": [asdict(a) for a in attempts if a.kind == "bad" and not 400 <= a.status < 500],
        "refusals_429_503": sum(a.status in REFUSED for a in attempts),
        "retries": sum(a.retry for a in attempts),
        "transport_errors": [asdict(a) for a in attempts if a.status == 0],
        "latency_answered_s": {k: latency([a.seconds for a in attempts if a.kind == k and a.status == 200])
                               for k in kinds if k != "bad"},
        "latency_bad_s": latency([a.seconds for a in attempts if a.kind == "bad"]),
    }


def plot(series: list[tuple[float, float]], attempts: list[Attempt], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=[3, 2])
    top.plot([t / 60 for t, _ in series], [mb for _, mb in series], color="C0")
    top.set_ylabel("server RSS (MB)")
    top.set_title(title)
    groups = [(f"{kind} 200", "o", lambda a, k=kind: a.kind == k and a.status == 200) for kind in MIX if kind != "bad"]
    groups += [("refused 429/503", "x", lambda a: a.status in REFUSED),
               ("bad payloads", "s", lambda a: a.kind == "bad"),
               ("5xx or no answer", "X", lambda a: a.status == 0 or 500 <= a.status < 600 and a.status not in REFUSED)]
    for i, (label, marker, member) in enumerate(groups):
        mine = [a for a in attempts if member(a)]
        if mine:
            bottom.scatter([a.t / 60 for a in mine], [a.seconds for a in mine], s=12, marker=marker, color=f"C{i + 1}",
                           label=label)
    bottom.set_ylabel("request latency (s)")
    bottom.set_xlabel("minutes since the first client started")
    bottom.legend(fontsize=7, ncol=2)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(report: dict) -> None:
    s, m, f = report["results"], report["memory"], report["fairness"]
    print(f"soak: {report['requests']} requests ({report['attempts']} attempts) from {report['clients']} clients in "
          f"{report['wall_s']:.0f} s, model {report['model']}, {report['steps']} steps")
    for kind, codes in s["status_codes"].items():
        lat = s["latency_answered_s"].get(kind, s["latency_bad_s"])
        lat_text = f"p50 {lat['p50']:.2f} s  p95 {lat['p95']:.2f} s  max {lat['max']:.2f} s" if lat["n"] else "-"
        print(f"  {kind:<11} {' '.join(f'{c}:{n}' for c, n in codes.items()):<24} {lat_text}")
    print(f"  5xx (other than 503): {s['server_errors_5xx']}   refusals 429/503: {s['refusals_429_503']}   retries: "
          f"{s['retries']}   transport errors: {len(s['transport_errors'])}   bad payloads not 4xx: "
          f"{len(s['bad_payloads_not_4xx'])}")
    slope = m["second_half_slope_mb_per_min"]
    print(f"  memory: start {m['start_mb']:.0f} MB, end {m['end_mb']:.0f} MB, peak {m['peak_mb']:.0f} MB (VmHWM "
          f"{report['server_peak_rss_mb']:.0f}), second-half slope "
          f"{'n/a' if slope is None else f'{slope:+.2f} MB/min'}")
    print(f"  fairness: answered per client {f['answered_min']}..{f['answered_max']}, Jain over answered counts "
          f"{f['jain_answered']}, over answered shares of valid requests {f['jain_answered_share']}, starved: "
          f"{f['starved_clients'] or 'none'}")
    print(f"  server: exit {report['sigterm_exit_s']:.2f} s after SIGTERM (code {report['exit_code']}), alive to the "
          f"end: {report['server_alive_at_end']}, stderr tracebacks: {report['server_stderr_tracebacks']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="the span over which the clients send")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="model folder (default: the shipped default)")
    ap.add_argument("--max-work", type=int, default=4_000_000)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--max-wait", type=float, default=25.0)
    ap.add_argument("--out", default="docs/serve_soak.json")
    ap.add_argument("--plot", default="docs/serve_soak.png")
    args = ap.parse_args()
    plans = plan(args.requests, args.clients, random.Random(args.seed))
    port = free_port()
    server = start_server(args.model, port, ["--max-work", str(args.max_work), "--max-queue", str(args.max_queue),
                                             "--max-wait", str(args.max_wait)])
    stderr: list[str] = []
    drainer = threading.Thread(target=drain, args=(server.stderr, stderr), daemon=True)
    drainer.start()
    attempts: list[Attempt] = []
    series: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    sampler = threading.Thread(target=sample_rss, args=(server.pid, t0, stop, series), daemon=True)
    sampler.start()
    try:
        threads = [threading.Thread(target=run_client, args=(c, items, f"http://127.0.0.1:{port}", args.minutes * 60,
                                                             args.steps, args.seed, t0, attempts))
                   for c, items in enumerate(plans)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        alive = server.poll() is None
        peak = peak_rss_mb(server.pid) if alive else None
    finally:
        stop.set()
        sampler.join()
        stopping = time.monotonic()
        stop_server(server)
    exit_s = time.monotonic() - stopping
    drainer.join(5)
    clients = per_client(attempts, plans)
    report = {
        "model": args.model or "shipped default (layout64)", "minutes": args.minutes, "requests": args.requests,
        "attempts": len(attempts), "clients": args.clients, "steps": args.steps, "seed": args.seed, "mix": MIX,
        "limits": {"max_work": args.max_work, "max_queue": args.max_queue, "max_wait_s": args.max_wait},
        "wall_s": round(wall, 1), "results": summarize(attempts), "fairness": fairness(clients),
        "clients_detail": clients, "memory": memory(series),
        "server_peak_rss_mb": peak, "server_alive_at_end": alive, "sigterm_exit_s": round(exit_s, 2),
        "exit_code": server.returncode, "server_stderr_tracebacks": sum("Traceback" in line for line in stderr),
        "server_stderr_tail": stderr[-40:], "rss_mb_series": series,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot(series, attempts, Path(args.plot), f"condiff serve soak: {args.requests} requests, {args.clients} clients, "
                                            f"{args.minutes:g} min, {args.steps} steps")
    print_summary(report)
    print(f"wrote {out} and {args.plot}")
    sys.exit(1 if report["results"]["server_errors_5xx"] or not alive else 0)


if __name__ == "__main__":
    main()
