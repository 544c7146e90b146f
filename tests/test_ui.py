"""condiff serve: the JSON API (validation, queueing under concurrent load) and the page, driven in headless Chromium."""
import base64
import io
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("gradio")
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from condiff.png import parse_parameters  # noqa: E402
from condiff.ui.app import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """The real app on a free loopback port, in a thread; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(str(tiny_model), out_dir=str(tmp_path_factory.mktemp("served")))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/api/samplers", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    srv.should_exit = True
    thread.join(5)


def test_api_generates_pngs_that_carry_their_parameters(server):
    r = httpx.post(server + "/api/txt2img", json={"prompt": "a red circle", "steps": 3, "seed": 7, "num_images": 2},
                   timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert body["seeds"] == [7, 8]
    for b64, params, seed in zip(body["images"], body["parameters"], body["seeds"]):
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert img.size == (16, 16) and img.format == "PNG"
        p = parse_parameters(img.info["parameters"])
        assert p["prompt"] == "a red circle" and p["Seed"] == str(seed) and p["Steps"] == "3"
    # same seed, same image, alone or in a batch
    alone = httpx.post(server + "/api/txt2img", json={"prompt": "a red circle", "steps": 3, "seed": 8}, timeout=60).json()
    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(alone["images"][0]))), dtype=int)
    b = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][1]))), dtype=int)
    assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("payload, status, message", [
    ({"prompt": "a pink circle"}, 400, "prompt: unknown word 'pink'"),
    ({"prompt": "a red circle", "steps": 0}, 400, "steps: must be between 1 and 1000"),
    ({"prompt": "a red circle", "sampler": "plms"}, 400, "sampler: unknown sampler 'plms'"),
    ({"prompt": "a red circle", "num_images": 99}, 400, "num_images: must be between 1 and 16"),
    ({"prompt": "a red circle", "guidance_scale": -1}, 400, "guidance_scale: must be between 0 and 50"),
    ({"prompt": ""}, 422, "prompt: String should have at least 1 character"),  # the schema's minLength
    ({"prompt": "a red circle", "steps": "many"}, 422, "steps: Input should be a valid integer"),
    ({"steps": 3}, 422, "prompt: Field required"),
    ({"prompt": "a red circle", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"prompt": "a red circle", "guide": "magic"}, 400, "guide: unknown guide 'magic'"),
    ({"prompt": "a red circle", "guide": "clip", "guide_scale": -2}, 400, "guide_scale: must be between 0 and 100"),
    ({"prompt": "circle red a", "guide": "classifier"}, 400, "prompt: the classifier guide needs a world caption"),
    ({"prompt": "a red circle", "guidance_rescale": 2}, 400, "guidance_rescale: must be between 0 and 1"),
    ({"prompt": "a red circle", "layout": [{"phrase": "a red circle", "box": [0, 0, 0.5, 0.5]}]}, 400,
     "layout: this model has no grounding layers"),
    ({"prompt": "a red circle", "layout": [{"phrase": "a red circle", "box": [0.5, 0, 0.2, 0.5]}]}, 400,
     "layout: boxes[0] must be"),
])
def test_api_rejects_bad_values_with_a_clear_4xx(server, payload, status, message):
    r = httpx.post(server + "/api/txt2img", json=payload, timeout=30)
    assert r.status_code == status and r.json()["detail"].startswith(message), r.text


def test_service_guides_with_the_shipped_judges():
    """The page's and API's guide field: the shipped base32 with the shipped classifier, loaded once and reused."""
    from condiff.ui.service import GenerationService, Txt2ImgRequest

    from condiff.catalogue import BASE32

    service = GenerationService(BASE32)
    plain, = service.txt2img(Txt2ImgRequest("two red triangles", seed=3, steps=3))
    guided, = service.txt2img(Txt2ImgRequest("two red triangles", seed=3, steps=3, guide="classifier", guide_scale=30,
                                             guidance_rescale=0.5))
    p = parse_parameters(guided.parameters)
    assert p["Guidance"] == "classifier" and p["Guidance scale"] == "30.0" and p["Guidance rescale"] == "0.5"
    assert "Guidance" not in parse_parameters(plain.parameters)
    assert np.abs(guided.pixels.astype(int) - plain.pixels.astype(int)).max() > 0
    judge = service._judges
    service.txt2img(Txt2ImgRequest("two red triangles", seed=4, steps=2, guide="classifier"))
    assert list(judge) == ["classifier"] and service._judges is judge


def test_api_queues_20_concurrent_requests_and_answers_all(server):
    """20 at once against a queue of 8: each is answered 200, or 429 with a Retry-After at once (then retried)."""
    waits = {200: [], 429: []}

    def one(i):
        codes = []
        while True:
            start = time.perf_counter()
            r = httpx.post(server + "/api/txt2img", json={"prompt": "three blue squares", "steps": 2, "seed": i}, timeout=120)
            codes.append(r.status_code)
            waits.setdefault(r.status_code, []).append(time.perf_counter() - start)
            if r.status_code != 429:
                return codes
            assert int(r.headers["Retry-After"]) >= 1
            time.sleep(0.2)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    # a refusal does not wait in the queue: faster than the slowest answer (which waited behind a full queue)
    assert max(waits[429], default=0) < max(max(waits[200]) / 2, 1.0), waits
    assert all(codes[-1] == 200 and set(codes) <= {200, 429} for codes in results)
    assert sum(codes == [200] for codes in results) >= 8  # a full queue's worth was served without a retry


def _b64_png(size=16, colour=(200, 30, 30), box=(4, 4, 10, 10)) -> str:
    px = np.zeros((size, size, 3), dtype=np.uint8)
    px[box[1]:box[3], box[0]:box[2]] = colour
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_api_img2img_and_inpaint(server):
    src = _b64_png()
    r = httpx.post(server + "/api/img2img", json={"prompt": "a blue circle", "image": src, "strength": 0.0, "seed": 1,
                                                  "steps": 3}, timeout=60)
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(base64.b64decode(src)))))  # strength 0: the input
    assert parse_parameters(r.json()["parameters"][0])["Denoising strength"] == "0.0"
    r = httpx.post(server + "/api/inpaint", json={"prompt": "a red circle", "image": src, "box": [0, 0, 8, 16],
                                                  "seed": 2, "steps": 3}, timeout=60)
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
    assert np.array_equal(out[:, 8:], np.asarray(Image.open(io.BytesIO(base64.b64decode(src))))[:, 8:])
    mask = _b64_png(colour=(255, 255, 255), box=(0, 0, 16, 8))
    r = httpx.post(server + "/api/inpaint", json={"prompt": "a red circle", "image": src, "mask": mask, "steps": 2},
                   timeout=60)
    assert r.status_code == 200 and parse_parameters(r.json()["parameters"][0])["Mask pixels"] == "128"


@pytest.mark.parametrize("path, payload, message", [
    ("img2img", {"image": "@@@"}, "image: not base64"),
    ("img2img", {"image": base64.b64encode(b"not an image").decode()}, "image: the data is not a readable image"),
    ("img2img", {"strength": 1.5}, "strength: must be a finite number between 0 and 1"),
    ("img2img", {"steps": 0}, "steps: must be between 1 and 1000"),
    ("inpaint", {}, "inpaint: give exactly one of mask and box"),
    ("inpaint", {"box": [0, 0, 17, 4]}, "box: 0,0,17,4 is not a non-empty box"),
    ("inpaint", {"mask": _b64_png(size=8)}, "mask: the mask is 8x8, the image 16x16"),
    ("inpaint", {"mask": _b64_png(colour=(0, 0, 0))}, "mask: the mask is empty"),
])
def test_api_edits_reject_bad_input_with_a_400(server, path, payload, message):
    body = {"prompt": "a red circle", "image": _b64_png(), "steps": 2} | payload
    r = httpx.post(f"{server}/api/{path}", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["detail"].startswith(message), r.text


def test_sampler_list(server):
    assert [s["label"] for s in httpx.get(server + "/api/samplers").json()][:2] == ["DDPM", "DDIM"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CONDIFF_REQUIRE_BROWSER"):
            pytest.fail("CONDIFF_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium on this machine (CI installs it: see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


def test_page_generates_an_image_and_restores_its_parameters(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server + "/", wait_until="networkidle")
    page.locator("#prompt textarea").fill("a green triangle above a white circle")
    page.locator("#seed input").fill("42")
    steps = page.locator("#steps input[type=number]")
    steps.fill("4")
    steps.press("Enter")
    page.locator("#num-images input[type=number]").fill("2")
    page.locator("#num-images input[type=number]").press("Enter")
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#parameters textarea').value.length > 0", timeout=60000)
    assert page.locator("#used-seed textarea, #used-seed input").first.input_value() == "42"
    src = page.locator("#gallery img").first.get_attribute("src")
    png = page.request.get(src if src.startswith("http") else server + "/" + src.lstrip("/")).body()
    params = parse_parameters(Image.open(io.BytesIO(png)).info["parameters"])
    assert params["prompt"] == "a green triangle above a white circle"
    assert params["Seed"] == "42" and params["Steps"] == "4"
    # drop that PNG back on the page: its parameters come back into the controls
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#seed input").fill("-1")
    path = tmp_path / "dropped.png"
    path.write_bytes(png)
    page.locator("#png-info input[type=file]").set_input_files(str(path))
    page.wait_for_function("document.querySelector('#prompt textarea').value.startsWith('a green')", timeout=30000)
    assert page.locator("#seed input").input_value() == "42"
    assert page.locator("#steps input[type=number]").input_value() == "4"
    page.close()


def test_page_img2img_and_inpaint_tabs(server, browser, tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(base64.b64decode(_b64_png()))
    page = browser.new_page()
    page.goto(server + "/", wait_until="networkidle")
    page.get_by_role("tab", name="Image to image").click()
    page.locator("#init-image input[type=file]").set_input_files(str(src))
    page.locator("#img2img-prompt textarea").fill("a blue circle")
    page.locator("#img2img-seed input").fill("5")
    page.locator("#img2img-generate").click()
    page.wait_for_function("document.querySelector('#img2img-parameters textarea').value.length > 0", timeout=60000)
    params = parse_parameters(page.locator("#img2img-parameters textarea").input_value())
    assert params["prompt"] == "a blue circle" and params["Seed"] == "5" and params["Denoising strength"] == "0.6"
    page.close()
    page = browser.new_page()  # the inpainting tab on a page of its own
    page.goto(server + "/", wait_until="networkidle")
    page.get_by_role("tab", name="Inpainting").click()
    empty = page.locator("#inpaint-editor .empty")
    empty.first.wait_for(state="visible", timeout=30000)
    for attempt in range(3):  # the editor's canvas starts lazily: an upload before it is ready is lost, so retry
        page.wait_for_timeout(1500)
        again = tmp_path / f"in{attempt}.png"  # a new name: choosing the same file again fires no change event
        again.write_bytes(src.read_bytes())
        page.locator("#inpaint-editor input[type=file]").set_input_files(str(again))
        try:
            empty.first.wait_for(state="detached", timeout=15000)  # the image is on the canvas
            break
        except Exception:
            if attempt == 2:
                raise
    page.wait_for_timeout(2000)  # and the editor has sent its value
    page.locator("#inpaint-box textarea, #inpaint-box input").first.fill("0,0,8,16")
    page.locator("#inpaint-prompt textarea").fill("a red circle")
    page.locator("#inpaint-generate").click()
    page.wait_for_function("document.querySelector('#inpaint-parameters textarea').value.length > 0", timeout=60000)
    params = parse_parameters(page.locator("#inpaint-parameters textarea").input_value())
    assert params["Edit"] == "inpaint (RePaint)" and params["Mask pixels"] == "128"
    src_url = page.locator("#inpaint-result img").first.get_attribute("src")
    png = page.request.get(src_url if src_url.startswith("http") else server + "/" + src_url.lstrip("/")).body()
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert np.array_equal(out[:, 8:], np.asarray(Image.open(src).convert("RGB"))[:, 8:])
    page.close()


def test_brush_layers_become_the_mask():
    from condiff.ui.app import _brush_mask

    layer = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (2, 3, 6, 9))
    mask = np.asarray(Image.open(io.BytesIO(_brush_mask([None, layer], (16, 16)))).convert("L"))
    assert mask.shape == (16, 16) and (mask > 0).sum() == 4 * 6 and mask[3, 2] == 255 and mask[0, 0] == 0
    assert _brush_mask([Image.new("RGBA", (16, 16), (0, 0, 0, 0))], (16, 16)) is None


def test_openapi_states_the_bounds_and_the_errors_the_server_gives(server):
    spec = httpx.get(server + "/api/openapi.json").json()
    steps = spec["components"]["schemas"]["Txt2ImgBody"]["properties"]["steps"]
    assert (steps["minimum"], steps["maximum"]) == (1, 1000)
    assert spec["components"]["schemas"]["Img2ImgBody"]["properties"]["strength"]["maximum"] == 1
    for path in ("/api/txt2img", "/api/img2img", "/api/inpaint"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"200", "400", "422"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    r = httpx.post(server + "/api/txt2img", json={"prompt": "a " + "q" * 100000}, timeout=30)
    assert r.status_code == 422 and len(r.json()["detail"]) <= 300  # over the schema's maxLength; not echoed back
