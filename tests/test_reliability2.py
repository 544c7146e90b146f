"""Reliability and security II (issue 33): a guarded server, any process count, every signal path, bounded
generation, hostile files. Tiny and fast: the whole file runs in well under 90 s on two cores."""
from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from condiff.cli import main  # noqa: E402
from condiff.ui.api import create_api  # noqa: E402
from condiff.ui.service import GenerationService  # noqa: E402

TOKEN = "s3cret-token-for-tests"
TXT2IMG = {"prompt": "a red circle", "steps": 1, "seed": 0}


# --- a guarded server -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(tiny_model):
    return TestClient(create_api(GenerationService(tiny_model), token=TOKEN))


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-123", f"Basic {TOKEN}", "Bearer", f"bearer  {TOKEN}x"])
def test_the_api_refuses_a_missing_or_wrong_token_before_reading_the_body(guarded, header):
    headers = {"Authorization": header} if header else {}
    r = guarded.post("/api/txt2img", json=TXT2IMG | {"steps": "not even valid"}, headers=headers)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json() == {"detail": "authorization: a valid 'Bearer <token>' is required"}
    assert TOKEN not in r.text
    assert guarded.get("/api/samplers", headers=headers).status_code == 401


def test_the_right_token_is_served_and_the_schema_states_the_scheme(guarded):
    r = guarded.post("/api/txt2img", json=TXT2IMG, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    schema = guarded.get("/api/openapi.json").json()  # the docs stay readable: how to call, not a way to generate
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "the server's token: `condiff serve --token T` or CONDIFF_TOKEN"}
    op = schema["paths"]["/api/txt2img"]["post"]
    assert op["security"] == [{"HTTPBearer": []}] and "401" in op["responses"]


def test_an_unguarded_api_is_unchanged_and_bodies_are_bounded(tiny_model):
    client = TestClient(create_api(GenerationService(tiny_model)))
    schema = client.get("/api/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {}) and client.get("/api/samplers").status_code == 200
    r = client.post("/api/txt2img", content=b"{}", headers={"content-type": "application/json",
                                                             "content-length": str(64 * 2 ** 20)})
    assert r.status_code == 413 and r.json()["detail"] == "body: at most 32 MiB"


def test_exposure_warnings_name_what_is_open():
    pytest.importorskip("gradio")
    from condiff.ui.app import exposure_warning, page_login

    assert exposure_warning("127.0.0.1", None, None) is None
    both = exposure_warning("0.0.0.0", None, None)
    assert "--token" in both and "CONDIFF_TOKEN" in both and "--auth USER:PASS" in both
    api_open = exposure_warning("0.0.0.0", None, ("ada", "pw"))
    assert "--token" in api_open and "--auth" not in api_open
    assert exposure_warning("0.0.0.0", TOKEN, None) is None  # the token guards the API and is the page's password
    assert page_login(None, ("ada", "pw")) == [("ada", "pw")] and page_login(None, None) is None
    check = page_login(TOKEN, None)
    assert check("anyone", TOKEN) and not check("anyone", "wrong")


@pytest.mark.parametrize("argv, env, said", [(["--token", "short"], {}, "--token / CONDIFF_TOKEN: must be at least 8"),
                                             ([], {"CONDIFF_TOKEN": "has a space"}, "CONDIFF_TOKEN: must be"),
                                             (["--auth", "nopassword"], {}, "--auth / CONDIFF_AUTH: must be USER:PASS")])
def test_bad_tokens_and_logins_are_one_line_and_never_echoed(argv, env, said, capsys, monkeypatch):
    pytest.importorskip("gradio")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1 and "short" not in err and "nopassword" not in err


def test_the_page_and_gradios_api_need_a_login(tiny_model, tmp_path):
    pytest.importorskip("gradio")
    from condiff.ui.app import create_app

    client = TestClient(create_app(str(tiny_model), out_dir=str(tmp_path), token=TOKEN, auth=("ada", "lovelace")))
    assert client.get("/config").status_code == 401 and client.post("/gradio_api/call/txt2img", json={"data": []}).status_code == 401
    assert client.post("/login", data={"username": "ada", "password": TOKEN}).status_code == 400  # --auth wins
    assert client.post("/login", data={"username": "ada", "password": "lovelace"}).status_code == 200
    assert client.get("/config").status_code == 200
    assert client.get("/api/samplers").status_code == 401  # the page's login is not the API's token


# --- any config on any process count -----------------------------------------------------------------------------

def test_auto_shards_follow_the_process_count():
    from condiff.train.distributed import resolve_shards

    assert {w: resolve_shards("auto", 12, w) for w in (1, 2, 3, 4, 6, 12)} == {1: 1, 2: 2, 3: 3, 4: 4, 6: 6, 12: 12}
    assert resolve_shards(4, 8, 3) == 4  # a number stays as given (my_shards refuses 4 shards over 3 processes)
    with pytest.raises(ValueError, match="optim.batch_size: 8 cannot be split over 3 processes"):
        resolve_shards("auto", 8, 3)


def test_a_config_without_micro_batches_runs_on_two_processes_as_one_with_two_shards(tiny_config_path, tmp_path):
    """The README's torchrun line with a config that names no micro_batches: auto resolves to 2 shards, and one
    process given micro_batches 2 trains the same weights; the first line states the batch and the shards."""
    import json

    from test_distributed import _same, _torchrun, _weights

    done = _torchrun(["train", "--config", str(tiny_config_path), "--out", str(tmp_path / "two"), "--workers", "0"])
    assert done.returncode == 0, done.stderr[-8000:]  # the ranks' own output comes before torchrun's report
    assert done.stdout.splitlines()[0] == ("training text2image on 2 processes: global batch 4, 2 per process, "
                                           "2 shards of 2 (optim.micro_batches auto); from step 0 to 2")
    cfg = json.loads(tiny_config_path.read_text())
    cfg["optim"] |= {"micro_batches": 2}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "one"), "--workers", "0"]) == 0
    _same(_weights(tmp_path / "one"), _weights(tmp_path / "two"))
    saved = json.loads((tmp_path / "two" / "config.json").read_text())
    assert saved["optim"]["micro_batches"] == "auto"  # resumed on another count, it follows that count


@pytest.mark.parametrize("value, said", [("four", "micro_batches: 'auto' or a positive integer, got 'four'"),
                                         (True, "expected int, got True")])
def test_bad_micro_batches_are_one_line(tmp_path, capsys, value, said):
    import json

    from conftest import TINY

    (tmp_path / "c.json").write_text(json.dumps(TINY | {"optim": TINY["optim"] | {"micro_batches": value}}))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r"), "--workers", "0"]) == 2
    assert said in capsys.readouterr().err


# --- every signal path -------------------------------------------------------------------------------------------

def _start_training(tmp_path, name: str, workers: int, steps: int = 12, env: dict | None = None):
    """A tiny training run as its own process group (as a shell job is), stopped once its first checkpoint exists."""
    import json
    import os
    import subprocess
    import sys
    import time

    from conftest import TINY

    cfg = json.loads(json.dumps(TINY)) | {"checkpoint_every": 4}
    cfg["optim"] |= {"steps": steps}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "condiff.cli", "train", "--config", str(tmp_path / "c.json"), "--workers", str(workers)]
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / name)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    latest = tmp_path / name / "checkpoints" / "latest"
    while not latest.exists() and proc.poll() is None:
        time.sleep(0.02)
    return proc, cmd


@pytest.mark.parametrize("signame, workers, code", [("SIGTERM", 2, 143), ("SIGINT", 2, 130)])
def test_a_signal_to_the_whole_group_saves_once_and_resumes_exactly(tmp_path, signame, workers, code):
    """What `timeout`, `docker stop` and Ctrl-C in a shell send: the signal reaches the data workers too, which leave
    it to the main process; one checkpoint, one line, the exit code of the signal, no traceback."""
    import os
    import signal
    import subprocess

    from safetensors.torch import load_file

    proc, cmd = _start_training(tmp_path, "killed", workers)
    os.killpg(proc.pid, getattr(signal, signame))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-1500:]
    assert "Traceback" not in err and "killed by signal" not in err and out.count("interrupted: saved step") == 1
    assert err.strip().splitlines()[-1] == "condiff: interrupted" + (" (SIGTERM)" if code == 143 else "")
    if signame != "SIGTERM":
        return
    # both in a process like the killed one (one thread): a different thread count may round convolutions differently
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for argv in (["--out", str(tmp_path / "killed"), "--resume"], ["--out", str(tmp_path / "straight")]):
        assert subprocess.run(cmd + argv, capture_output=True, env=env).returncode == 0
    a, b = (load_file(str(tmp_path / r / "model" / "unet" / "model.safetensors")) for r in ("killed", "straight"))
    assert all(a[k].equal(b[k]) for k in a)


def test_a_second_signal_exits_at_once_and_keeps_the_last_complete_checkpoint(tmp_path):
    import os
    import signal

    from condiff.train.state import latest_checkpoint

    proc, _ = _start_training(tmp_path, "run", workers=2, steps=400, env={"CONDIFF_SIGNAL_ECHO_S": "0"})
    # back to back, so that the second comes before the run can act on the first (a tiny run saves and exits within
    # 20 ms); two SIGTERMs would merge into one pending signal, so the first is SIGINT
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err[-1500:]
    assert "interrupted: saved step" not in out
    assert latest_checkpoint(tmp_path / "run").is_dir() and not list((tmp_path / "run" / "checkpoints").glob("*tmp*"))


def test_the_echo_of_a_signal_still_saves(tmp_path):
    """torchrun's agent forwards SIGTERM to workers that `timeout` has already signalled with the whole group, and
    Ctrl-C under torchrun is SIGINT then the agent's SIGTERM: a second signal within a second is that echo."""
    import os
    import signal
    import time

    proc, _ = _start_training(tmp_path, "run", workers=0, steps=400)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err[-1500:]
    assert out.count("interrupted: saved step") == 1


# --- bounded generation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, said", [(["generate", "a red circle", "b", "-n", "5001"],
                                         "--num-images: 10,002 images in one call is over --max-images 10,000"),
                                        (["generate", "a red circle", "-n", "3", "--max-images", "2"],
                                         "--num-images: 3 images in one call is over --max-images 2"),
                                        (["eval", "bench", "--prompts-per-category", "1000", "--n-per-prompt", "100"],
                                         "--prompts-per-category x --n-per-prompt: 500,000 images in one call")])
def test_a_call_over_max_images_is_refused_at_once(argv, said, capsys):
    import time

    start = time.monotonic()
    assert main(argv) == 2 and time.monotonic() - start < 1.0  # before any model loads
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1


def test_many_images_are_written_as_they_come_and_only_the_grid_is_kept(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from condiff.cli.output import MAX_GRID, write_images
    from condiff.pipelines.requests import Generated

    made = []

    def batches(n, size=8):
        for i in range(0, n, size):
            made.append(i)
            yield [Generated(np.full((4, 4, 3), (i + k) % 256, np.uint8), "p", "", {"Seed": i + k}, i + k)
                   for k in range(min(size, n - i))]

    n = MAX_GRID + 8
    done = write_images(batches(n), tmp_path / "o.png", n)
    assert len(done) == n and all(p.is_file() for p in done)
    assert Image.open(tmp_path / "o.png").info["parameters"].endswith(f"Grid: {MAX_GRID}")
    assert f"shows the first {MAX_GRID} of {n} images" in capsys.readouterr().err


def test_the_api_states_its_work_budget(tiny_model):
    from condiff.ui.service import ServeLimits

    client = TestClient(create_api(GenerationService(tiny_model, limits=ServeLimits(max_work=1000))))
    op = client.get("/api/openapi.json").json()["paths"]["/api/txt2img"]["post"]
    assert op["x-max-work"] == 1000 and "above 1,000 (condiff serve --max-work)" in op["responses"]["400"]["description"]
    r = client.post("/api/txt2img", json=TXT2IMG | {"steps": 4, "num_images": 2})
    assert r.status_code == 400 and r.json()["detail"].startswith("work: 2 image(s) x 4 steps x 16^2 = 2,048 is over")


# --- hostile and broken files ------------------------------------------------------------------------------------

def _safetensors(path, header: dict, data: bytes = b"", sparse_to: int = 0):
    import json

    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    if sparse_to:
        with open(path, "r+b") as f:
            f.truncate(sparse_to)  # a hole: no disk used, but the file claims every byte
    return path


def test_a_header_declaring_a_huge_tensor_is_refused_before_any_allocation(tmp_path):
    from condiff.io import CheckpointError, load_tensors

    huge = {"w": {"dtype": "F32", "shape": [2 ** 38], "data_offsets": [0, 2 ** 40]}}  # 1 TiB
    with pytest.raises(CheckpointError, match=r"declares 1,099,511,627,776 bytes of tensors, but the file holds 0"):
        load_tensors(_safetensors(tmp_path / "small.safetensors", huge))
    try:
        sparse = _safetensors(tmp_path / "sparse.safetensors", huge, sparse_to=2 ** 40 + 200)
    except OSError:
        pytest.skip("this file system has no sparse 1 TiB files")
    with pytest.raises(CheckpointError, match=r"need 1,024.0 GiB, more than the .* GiB this machine has"):
        load_tensors(sparse)
    mid = {"w": {"dtype": "F32", "shape": [2 ** 20], "data_offsets": [0, 2 ** 22]}}
    with pytest.raises(CheckpointError, match="refused before loading"):
        load_tensors(_safetensors(tmp_path / "mid.safetensors", mid, sparse_to=2 ** 22 + 200), limit=2 ** 20)


def test_a_training_run_with_a_booby_trapped_checkpoint_is_one_line(tiny_model, tiny_config_path, tmp_path, capsys):
    """A run folder whose latest checkpoint header was swapped for a hostile one: --resume ends in one line."""
    import shutil

    shutil.copytree(tiny_model.parent, tmp_path / "r")
    ckpt = tmp_path / "r" / "checkpoints" / (tmp_path / "r" / "checkpoints" / "latest").read_text().strip()
    _safetensors(ckpt / "state.safetensors", {"w": {"dtype": "F32", "shape": [2 ** 38], "data_offsets": [0, 2 ** 40]}})
    capsys.readouterr()
    assert main(["train", "--config", str(tiny_config_path), "--out", str(tmp_path / "r"), "--workers", "0",
                 "--resume", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "declares 1,099,511,627,776 bytes of tensors" in err and err.count("\n") == 1


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_leaf = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6)
json_any = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                               inner, max_size=3),
                        max_leaves=12)
tensor_info = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "I64", "BF16", "F99", 3]),
                                     "shape": st.lists(st.integers(-1, 2 ** 40) | st.booleans() | st.text(max_size=2),
                                                       max_size=4),
                                     "data_offsets": st.lists(st.integers(-1, 2 ** 41), max_size=3)}) | json_any


def _one_line_user_error(exc: BaseException) -> None:
    from condiff.errors import USER_ERRORS

    assert isinstance(exc, USER_ERRORS), repr(exc)
    assert "\n" not in str(exc) and 0 < len(str(exc)) < 1000


@FUZZ
@given(header=st.dictionaries(st.text(max_size=8), tensor_info, max_size=4) | json_any,
       data=st.binary(max_size=64), length=st.none() | st.integers(0, 2 ** 64 - 1), cut=st.integers(0, 200))
def test_fuzz_safetensors_headers(tmp_path_factory, header, data, length, cut):
    """Any header (random JSON, random tensor entries, a lying length prefix, a truncated file): tensors or one line."""
    import json

    from condiff.io import load_tensors

    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    raw = json.dumps(header).encode()
    blob = (len(raw) if length is None else length).to_bytes(8, "little") + raw + data
    path.write_bytes(blob[:len(blob) - cut] if cut < len(blob) else b"")
    try:
        load_tensors(path)
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
        _one_line_user_error(e)


@FUZZ
@given(content=json_any.map(lambda v: __import__("json").dumps(v)) | st.text(max_size=40).map(str)
       | st.binary(max_size=40) | st.integers(1, 3000).map(lambda n: "[" * n * 10 + "]" * n * 10))
def test_fuzz_pipeline_config_json(tiny_model, tmp_path_factory, content):
    """A pipeline folder whose config.json (the UNet's) is replaced by anything: the model or one line."""
    import shutil

    from condiff.pipelines.text2image import Text2ImagePipeline

    folder = tmp_path_factory.mktemp("pipe") / "model"
    shutil.copytree(tiny_model, folder)
    target = folder / "unet" / "config.json"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        Text2ImagePipeline.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001
        _one_line_user_error(e)


@FUZZ
@given(lines=st.lists(json_any.map(lambda v: __import__("json").dumps(v)) | st.text(max_size=30)
                      | st.integers(1, 3000).map(lambda n: "[" * n * 10), max_size=4) | st.binary(max_size=40))
def test_fuzz_image_folder_metadata(tmp_path_factory, lines):
    """metadata.jsonl of any content (random JSON, text, bytes, deep nesting): rows or one line."""
    from condiff.data.imagefolder import read_metadata

    folder = tmp_path_factory.mktemp("folder")
    (folder / "metadata.jsonl").write_bytes(lines if isinstance(lines, bytes) else "\n".join(lines).encode())
    try:
        read_metadata(folder)
    except Exception as e:  # noqa: BLE001
        _one_line_user_error(e)
