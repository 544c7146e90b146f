"""Fair serving: the bounded queue (429 / 503 with Retry-After), the per-request work limit, cancellation at a step
boundary, and SIGTERM ending `condiff serve` within 2 s while a long request runs."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from condiff.ui.api import create_api  # noqa: E402
from condiff.ui.service import (Busy, Cancelled, GenerationService, RequestError, ServeLimits,  # noqa: E402
                                Txt2ImgRequest)


@pytest.fixture()
def service(tiny_model):
    return GenerationService(tiny_model, limits=ServeLimits(max_work=200_000, max_queue=1, max_wait=0.3))


def hold_turn(service):
    """A thread that holds the service's turn until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def run():
        with service.turn():
            entered.set()
            release.wait(10)

    threading.Thread(target=run, daemon=True).start()
    assert entered.wait(5)
    return release


def test_a_full_queue_is_refused_at_once_with_retry_after(service):
    release = hold_turn(service)
    client = TestClient(create_api(service))
    t = time.monotonic()
    r = client.post("/api/txt2img", json={"prompt": "a red circle", "steps": 2, "seed": 0})
    assert time.monotonic() - t < 1.0
    assert r.status_code == 429 and "queue full" in r.json()["detail"] and int(r.headers["Retry-After"]) >= 1
    release.set()
    time.sleep(0.1)
    assert client.post("/api/txt2img", json={"prompt": "a red circle", "steps": 2, "seed": 0}).status_code == 200


def test_a_request_that_waits_past_max_wait_gets_503(tiny_model):
    service = GenerationService(tiny_model, limits=ServeLimits(max_queue=4, max_wait=0.3))
    release = hold_turn(service)
    t = time.monotonic()
    with pytest.raises(Busy) as e:
        service.txt2img(Txt2ImgRequest("a red circle", steps=2, seed=0))
    assert e.value.status == 503 and 0.3 <= time.monotonic() - t < 1.5
    release.set()


def test_work_over_the_limit_is_refused_before_any_work(service):
    with pytest.raises(RequestError, match=r"work: 16 image\(s\) x 1000 steps x 16\^2 = 4,096,000 is over"):
        service.validate(Txt2ImgRequest("a red circle", steps=1000, num_images=16))
    with pytest.raises(ValueError, match="--max-queue"):
        ServeLimits(max_queue=0)
    with pytest.raises(ValueError, match="--max-wait"):
        ServeLimits(max_wait=float("nan"))


def test_a_cancelled_request_stops_at_the_next_step_and_frees_the_turn(tiny_model):
    service = GenerationService(tiny_model)
    cancel, steps = threading.Event(), []

    def callback(info):
        steps.append(info["i"])
        if len(steps) == 2:
            cancel.set()  # the client went away during step 2

    with pytest.raises(Cancelled, match="disconnected"):
        service.txt2img(Txt2ImgRequest("a red circle", steps=50, seed=0), callback, cancel)
    assert len(steps) == 2
    assert len(service.txt2img(Txt2ImgRequest("a red circle", steps=2, seed=0))) == 1  # the lock was released


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_ends_serve_within_two_seconds_during_a_long_request(tiny_model):
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "condiff.cli", "serve", "--model", str(tiny_model), "--port",
                             str(port), "--max-work", "100000000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/api/samplers", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        answers = []

        def heavy():
            try:
                answers.append(httpx.post(url + "/api/txt2img", json={"prompt": "a red circle", "steps": 1000,
                                                                      "num_images": 16, "sampler": "heun"}, timeout=60))
            except httpx.HTTPError as e:
                answers.append(e)

        threading.Thread(target=heavy, daemon=True).start()
        time.sleep(1.5)  # sampling is under way
        assert proc.poll() is None
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        elapsed = time.monotonic() - t
        assert elapsed < 2.0, f"serve took {elapsed:.1f} s to exit after SIGTERM"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_the_pages_upscale_action_reads_only_files_the_server_wrote(tmp_path):
    pytest.importorskip("gradio")
    import json

    from condiff.ui.app import _first_result

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.png").write_bytes(b"png")
    assert _first_result(json.dumps([str(tmp_path / "r" / "a.png"), "a red circle"]), tmp_path) == (b"png", "a red circle")
    secret = tmp_path.parent / "secret.txt"
    secret.write_text("x")
    for forged in ([str(secret), ""], [str(tmp_path / "r" / ".." / ".." / "secret.txt"), ""]):
        with pytest.raises(Exception, match="not a result of this server"):
            _first_result(json.dumps(forged), tmp_path)
    assert _first_result("", tmp_path) == (None, "") and _first_result("{", tmp_path) == (None, "")


def test_schemathesis_finds_no_failure_of_any_check(tiny_model, monkeypatch):
    """`st run --checks all` against `condiff serve` (a short run; benchmarks/api_fuzz.py runs the long one)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from api_fuzz import free_port, run_schemathesis, start_server, stop_server

    port = free_port()
    server = start_server(str(tiny_model), port)
    try:
        code, text = run_schemathesis(port, max_examples=15, seed=1)
    finally:
        stop_server(server)
    assert code == 0 and " passed" in text and "failed" not in text.split("SUMMARY")[-1], text[-3000:]


def test_undeclared_methods_get_405_with_allow(service):
    client = TestClient(create_api(service))
    r = client.request("TRACE", "/api/txt2img")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert client.put("/api/samplers").status_code == 405 and client.get("/api/nowhere").status_code == 404


def test_the_model_endpoint_names_the_served_model_as_its_images_do(service):
    """GET /api/model: name and A1111 hash as every image's infotext gives them, family, kind and native size."""
    import hashlib

    from condiff.fs import weight_files

    client = TestClient(create_api(service))
    info = client.get("/api/model").json()
    digest = hashlib.sha256()
    for f in weight_files(service.model_path):
        digest.update(f.read_bytes())
    assert info == {"name": service.model_path.name, "hash": digest.hexdigest()[:10],
                    "family": f"condiff {service.pipe.kind}", "kind": service.pipe.kind,
                    "resolution": service.pipe.resolution}
    r = client.post("/api/txt2img", json={"prompt": "a red circle", "steps": 2})
    assert r.status_code == 200
    assert f"Model hash: {info['hash']}, Model: {info['name']}," in r.json()["parameters"][0]  # A1111's infotext
