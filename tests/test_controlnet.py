"""ControlNet (issue 36): zero-initialised joins leave the frozen UNet exactly as it was, the copy starts as its
encoder, the edge detector draws an object's outline, and the commands from a map to an image, bad input refused."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from condiff.cli import main
from condiff.nets.controlnet import ControlledUNet, ControlNet, ControlNetConfig, edge_map
from condiff.nets.unet import UNet, UNetConfig
from condiff.world.grammar import BACKGROUND
from condiff.world.render import PlacedObject, render


def _unet() -> UNet:
    """A random UNet whose zero-initialised output and attention projections are given values (as training would)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig(resolution=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(8,), head_channels=16, context_dim=8)).eval()
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return unet


def _inputs():
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 900])
    ctx = {"context": torch.randn(2, 4, 8, generator=g), "context_mask": torch.ones(2, 4, dtype=torch.bool)}
    return x, t, ctx, (torch.rand(2, 1, 64, 64, generator=g) > 0.9).float()


def test_a_fresh_controlnet_leaves_the_unet_exactly_as_it_was_and_its_copy_is_the_unets_encoder():
    unet = _unet()
    cn = ControlNet.from_unet(unet, ControlNetConfig(unet=unet.cfg, map_resolution=64))
    x, t, ctx, m = _inputs()
    with torch.no_grad():
        assert torch.equal(ControlledUNet(unet, cn)(x, t, control_map=m, **ctx), unet(x, t, **ctx))
        h, e, c = unet.prepare(x, t, **ctx)
        ours, theirs = cn.copy.encode(*cn.copy.prepare(x, t, **ctx)), unet.encode(h, e, c)
    assert all(torch.equal(a, b) for a, b in zip(ours[0] + [ours[1]], theirs[0] + [theirs[1]]))
    assert len(cn(x, t, m, **ctx)) == len(unet.inputs) + 1  # a residual for every skip, then the middle's


def test_the_zero_joins_pass_gradient_and_a_trained_controlnet_changes_the_output():
    unet = _unet()
    cn = ControlNet.from_unet(unet, ControlNetConfig(unet=unet.cfg, map_resolution=64))
    x, t, ctx, m = _inputs()
    ControlledUNet(unet, cn)(x, t, control_map=m, **ctx).pow(2).mean().backward()
    assert cn.zeros[0].weight.grad.abs().sum() > 0 and cn.middle_zero.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for z in list(cn.zeros) + [cn.middle_zero, cn.stem[-1]]:
            z.weight.normal_(0, 0.05)
        base, on = unet(x, t, **ctx), ControlledUNet(unet, cn)(x, t, control_map=m, **ctx)
        other = ControlledUNet(unet, cn)(x, t, control_map=torch.zeros_like(m), **ctx)
        off = ControlledUNet(unet, cn)(x, t, control_map=m, control_scale=0.0, **ctx)
    assert not torch.allclose(on, base) and not torch.allclose(on, other) and torch.equal(off, base)


def test_the_edge_map_of_a_square_is_its_outline_and_a_flat_image_has_none():
    square = PlacedObject("square", "white", 0.5, 0.5, 0.4)  # pixels 19.2 .. 44.8 of 64
    e = edge_map(render([[square]], 64))[0, 0].numpy().astype(bool)
    ys, xs = np.nonzero(e)
    lo, hi = 19.2, 44.8
    dist = np.minimum.reduce([np.abs(xs + 0.5 - lo), np.abs(xs + 0.5 - hi), np.abs(ys + 0.5 - lo), np.abs(ys + 0.5 - hi)])
    assert len(xs) > 0 and dist.max() <= 1.5  # every edge pixel on the outline
    inside = (xs + 0.5 > lo + 2) & (xs + 0.5 < hi - 2) & (ys + 0.5 > lo + 2) & (ys + 0.5 < hi - 2)
    assert not inside.any()
    for side in range(20, 44):  # the outline is closed: each side's row/column has an edge pixel within a pixel
        assert e[side, 18:21].any() and e[side, 43:46].any() and e[18:21, side].any() and e[43:46, side].any()
    assert edge_map(torch.zeros(1, 3, 32, 32)).sum() == 0


def test_the_segmentation_map_paints_each_object_in_its_classs_colour_and_nothing_else(tmp_path):
    from condiff.nets.controlnet import SEGMENT_COLOURS, segmentation_map

    objects = [PlacedObject("circle", "red", 0.25, 0.3, 0.3), PlacedObject("square", "blue", 0.7, 0.3, 0.3),
               PlacedObject("triangle", "green", 0.5, 0.75, 0.35)]
    images = render([objects], 64)
    m = (segmentation_map(images)[0].permute(1, 2, 0).numpy() * 255).round().astype(int)  # (64, 64, 3)
    for obj in objects:  # the object's centre pixel (the triangle's: its centroid, below the box centre) in its colour
        cy = obj.cy + (obj.s / 6 if obj.shape == "triangle" else 0)
        assert tuple(m[int(cy * 64), int(obj.cx * 64)]) == SEGMENT_COLOURS[obj.shape]
    painted = (m != 0).any(-1)
    drawn = (np.abs((images[0].permute(1, 2, 0).numpy() + 1) * 127.5 - np.array(BACKGROUND)) > 30).any(-1)
    assert (painted & ~drawn).sum() <= 0.15 * drawn.sum()  # the fringe only
    assert (drawn & ~painted).sum() == 0
    assert set(map(tuple, m.reshape(-1, 3))) <= {(0, 0, 0), *(SEGMENT_COLOURS[o.shape] for o in objects)}
    Image.fromarray(((images[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(tmp_path / "s.png")
    assert main(["control", "segmentation", str(tmp_path / "s.png"), "--out", str(tmp_path / "m.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png").convert("RGB")).astype(int), m)


@pytest.fixture(scope="module")
def tiny_seg_controlnet(tiny_model, tmp_path_factory):
    from conftest import TINY

    folder = tmp_path_factory.mktemp("seg")
    cfg = {"model": "controlnet", "base": str(tiny_model), "control": {"kind": "segmentation", "hint_channels": [8]},
           "data": {"resolution": 16}, "optim": {"steps": 1, "batch_size": 2, "warmup_steps": 1},
           "log_every": 1, "checkpoint_every": 1} | {"seed": TINY["seed"]}
    (folder / "seg.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(folder / "seg.json"), "--out", str(folder / "run")]) == 0
    return folder / "run" / "model"


def test_a_segmentation_controlnet_trains_and_without_a_model_the_command_says_how_to_make_one(
        tiny_model, tiny_seg_controlnet, tmp_path, capsys):
    assert json.loads((tiny_seg_controlnet / "config.json").read_text())["kind"] == "segmentation"
    Image.new("RGB", (16, 16)).save(tmp_path / "map.png")
    base = ["generate", "a red circle", "--model", str(tiny_model), "--steps", "2", "--out", str(tmp_path / "o.png"),
            "--control", str(tmp_path / "map.png"), "--control-kind", "segmentation"]
    assert main(base + ["--control-model", str(tiny_seg_controlnet)]) == 0
    capsys.readouterr()
    assert main(base + ["--control-model", str(tmp_path / "nothing")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "controlnet_segmentation64.json" in err


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_model, tmp_path_factory):
    from conftest import TINY

    folder = tmp_path_factory.mktemp("cn")
    cfg = {"model": "controlnet", "base": str(tiny_model), "control": {"kind": "edges", "hint_channels": [8]},
           "data": {"resolution": 16}, "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "lr": 0.01},
           "log_every": 1, "checkpoint_every": 1} | {"seed": TINY["seed"]}
    (folder / "cn.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(folder / "cn.json"), "--out", str(folder / "run")]) == 0
    return folder / "run" / "model"


def test_control_map_to_image_through_the_commands(tiny_model, tiny_controlnet, tmp_path):
    scene = render([[PlacedObject("circle", "red", 0.3, 0.6, 0.4)]], 16)
    Image.fromarray(((scene[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(tmp_path / "in.png")
    assert main(["control", "edges", str(tmp_path / "in.png"), "--out", str(tmp_path / "map.png"), "--size", "16"]) == 0
    saved = np.asarray(Image.open(tmp_path / "map.png"))[..., 0] > 127
    assert np.array_equal(saved, edge_map(scene)[0, 0].numpy().astype(bool))

    def draw(*extra):
        out = tmp_path / "o.png"
        assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "4", "--out", str(out),
                     *extra]) == 0
        return np.asarray(Image.open(out)), Image.open(out).info["parameters"]

    base, _ = draw()
    controlled, info = draw("--control", str(tmp_path / "map.png"), "--control-model", str(tiny_controlnet))
    off, _ = draw("--control", str(tmp_path / "map.png"), "--control-model", str(tiny_controlnet), "--control-scale", "0")
    assert "ControlNet: edges" in info and "Control scale: 1.0" in info
    assert np.array_equal(off, base)
    from condiff import components
    from condiff.pipelines.controlnet import with_control
    from condiff.pipelines.text2image import Text2ImagePipeline

    pipe = with_control(Text2ImagePipeline.from_pretrained(tiny_model), components.load("controlnet", tiny_controlnet))
    opts = pipe.defaults.replace(steps=4)
    with torch.no_grad():  # the trained ControlNet moves the drawing (in floats: the tiny model's pixels saturate)
        free, steered = pipe(["a red circle"], [0], opts), pipe(["a red circle"], [0], opts, control_map=edge_map(scene))
    assert (steered - free).abs().mean() > 1e-4


def test_bad_control_input_fails_in_one_line(tiny_model, tiny_controlnet, tmp_path, capsys):
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    (tmp_path / "text.png").write_text("not an image")
    base = ["generate", "a red circle", "--model", str(tiny_model), "--steps", "2", "--out", str(tmp_path / "o.png")]
    cases = [(base + ["--control", str(tmp_path / "big.png"), "--control-model", str(tiny_controlnet)], "20x20"),
             (base + ["--control", str(tmp_path / "text.png")], "--control"),
             (base + ["--control", str(tmp_path / "nothere.png")], "no such file"),
             (base + ["--control", str(tmp_path / "big.png"), "--control-model", str(tiny_model / "unet")],
              "not a ControlNet"),
             (base + ["--control", str(tmp_path / "big.png"), "--control-scale", "nan"], "between 0 and 2"),
             (["control", "edges", str(tmp_path / "text.png"), "--out", str(tmp_path / "m.png")], "text.png")]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) != 0, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    with pytest.raises(SystemExit):
        main(["control", "blobs", str(tmp_path / "big.png"), "--out", str(tmp_path / "m.png")])
    assert "invalid choice: 'blobs'" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_the_api_draws_from_a_control_map_and_refuses_a_bad_one_with_400(tiny_model, tiny_controlnet, tmp_path,
                                                                         monkeypatch):
    pytest.importorskip("fastapi")
    import base64
    import io

    from fastapi.testclient import TestClient

    from condiff.ui import service as service_module
    from condiff.ui.api import create_api

    monkeypatch.setitem(service_module.CONTROLNETS, "edges", tiny_controlnet)
    client = TestClient(create_api(service_module.GenerationService(tiny_model)))
    scene = render([[PlacedObject("square", "blue", 0.6, 0.4, 0.4)]], 16)
    m = (edge_map(scene)[0, 0].numpy() * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    body = {"prompt": "a blue square", "steps": 3, "seed": 5}
    plain = client.post("/api/txt2img", json=body).json()
    ok = client.post("/api/txt2img", json=body | {"control": b64})
    off = client.post("/api/txt2img", json=body | {"control": b64, "control_scale": 0}).json()
    assert ok.status_code == 200 and "ControlNet: edges" in ok.json()["parameters"][0]
    pixels = lambda r: np.asarray(Image.open(io.BytesIO(base64.b64decode(r["images"][0]))))
    assert np.array_equal(pixels(off), pixels(plain))  # scale 0: the base model's pixels
    assert client.post("/api/txt2img", json=body).json()["images"] == plain["images"]  # the next plain request too
    big = io.BytesIO()
    Image.new("L", (20, 20)).save(big, format="PNG")
    for extra, word in [({"control": base64.b64encode(big.getvalue()).decode()}, "20x20"),
                        ({"control": base64.b64encode(b"not an image").decode()}, "control"),
                        ({"control": b64, "control_scale": 5}, "control_scale")]:
        r = client.post("/api/txt2img", json=body | extra)
        assert r.status_code == 400 and word in r.json()["detail"], (extra.keys(), r.json())


def test_the_api_and_the_page_take_either_kind_of_map_each_read_by_its_own_controlnet(
        tiny_model, tiny_controlnet, tiny_seg_controlnet, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("gradio")
    import base64
    import io

    from fastapi.testclient import TestClient

    from condiff.png import parse_parameters
    from condiff.nets.controlnet import segmentation_map
    from condiff.pipelines.controlnet import map_png
    from condiff.ui import service as service_module
    from condiff.ui.api import create_api
    from condiff.ui.app import make_handlers

    monkeypatch.setitem(service_module.CONTROLNETS, "edges", tiny_controlnet)
    monkeypatch.setitem(service_module.CONTROLNETS, "segmentation", tiny_seg_controlnet)
    service = service_module.GenerationService(tiny_model)
    assert service.controllable() == ["edges", "segmentation"]
    client = TestClient(create_api(service))
    objects = [[PlacedObject("square", "blue", 0.6, 0.4, 0.4)]]
    seg, edges = io.BytesIO(), io.BytesIO()
    Image.fromarray(map_png(segmentation_map(render(objects, 16)))).save(seg, format="PNG")
    Image.fromarray(map_png(edge_map(render(objects, 16)))).save(edges, format="PNG")
    b64 = lambda buf: base64.b64encode(buf.getvalue()).decode()  # noqa: E731
    body = {"prompt": "a blue square", "steps": 3, "seed": 5}
    pixels = lambda r: np.asarray(Image.open(io.BytesIO(base64.b64decode(r["images"][0]))))  # noqa: E731
    by = {}
    for kind, buf in [("segmentation", seg), ("edges", edges), ("segmentation", seg)]:
        r = client.post("/api/txt2img", json=body | {"control": b64(buf), "control_kind": kind})
        assert r.status_code == 200 and f"ControlNet: {kind}" in r.json()["parameters"][0]
        assert by.setdefault(kind, pixels(r.json())).tobytes() == pixels(r.json()).tobytes()  # each kind's own net
    assert not np.array_equal(by["edges"], by["segmentation"])
    r = client.post("/api/txt2img", json=body | {"control": b64(seg), "control_kind": "depth"})
    assert r.status_code == 400 and "control_kind" in r.json()["detail"]
    photo = Image.fromarray(((render(objects, 48)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8))
    generate, _ = make_handlers(service, tmp_path)
    *_, last = generate("a blue square", "", 5, 2, 3.0, "DDIM", 1, control_image=photo, control_make=True,
                        control_kind="segmentation", progress=lambda *a, **k: None)
    assert parse_parameters(Image.open(last[0][0]).info["parameters"])["ControlNet"] == "segmentation"


def test_guess_mode_grades_the_residuals_by_depth_and_gives_the_map_to_the_conditional_branch_only(
        tiny_model, tiny_controlnet, tmp_path):
    unet = _unet()
    cn = ControlNet.from_unet(unet, ControlNetConfig(unet=unet.cfg, map_resolution=64))
    seen = []
    unet.register_forward_pre_hook(lambda m, a, kw: seen.append([c.abs().max().item() for c in kw["control"]])
                                   if kw.get("control") is not None else None, with_kwargs=True)
    with torch.no_grad():
        for z in list(cn.zeros) + [cn.middle_zero, cn.stem[-1]]:
            z.weight.fill_(0.01)
        x, t, ctx, m = _inputs()
        plain = [r.abs().max().item() for r in cn(x, t, m, **ctx)]
        ControlledUNet(unet, cn)(x, t, control_map=m, control_scale=2.0, control_guess=True, **ctx)
    want = [2.0 * p * s for p, s in zip(plain, torch.logspace(-1, 0, len(plain)).tolist())]
    assert np.allclose(seen[0], want, rtol=1e-5) and abs(want[0] / plain[0] - 0.2) < 1e-6

    from condiff.pipelines import requests
    from condiff.pipelines.controlnet import with_control
    from condiff.pipelines.text2image import Text2ImagePipeline
    from condiff import components

    pipe = with_control(Text2ImagePipeline.from_pretrained(tiny_model), components.load("controlnet", tiny_controlnet))
    branches = []
    pipe.denoiser.net.controlnet.register_forward_hook(lambda mod, a, out: branches.append(len(a[0])))
    scene = edge_map(render([[PlacedObject("circle", "red", 0.3, 0.6, 0.4)]], 16))
    req = requests.Txt2ImgRequest(["a red circle"], [0], pipe.defaults.replace(steps=2),
                                  control=requests.Control(scene, "edges", 1.0, "tiny", guess=True))
    out = next(requests.txt2img(pipe, req, requests.ModelTag("tiny")))[0]
    assert "Control mode: guess" in out.infotext()
    assert branches and all(n == 1 for n in branches)  # the ControlNet ran on the conditional half of CFG's batch only


def test_the_page_draws_from_an_uploaded_image_made_into_an_edge_map(tiny_model, tiny_controlnet, tmp_path,
                                                                      monkeypatch):
    pytest.importorskip("gradio")
    from condiff.png import parse_parameters
    from condiff.ui import service as service_module
    from condiff.ui.app import make_handlers

    monkeypatch.setitem(service_module.CONTROLNETS, "edges", tiny_controlnet)
    service = service_module.GenerationService(tiny_model)
    assert service.controllable()
    generate, _ = make_handlers(service, tmp_path)
    photo = Image.fromarray(((render([[PlacedObject("square", "white", 0.4, 0.5, 0.5)]], 48)[0].permute(1, 2, 0)
                              .numpy() + 1) * 127.5).astype(np.uint8))  # not the model's size: the map is made at it
    no_op = lambda *a, **k: None  # noqa: E731  (gradio's progress)
    *_, last = generate("a red circle", "", 5, 2, 3.0, "DDIM", 1, control_image=photo, control_make=True,
                        control_scale=1.0, progress=no_op)
    params = parse_parameters(Image.open(last[0][0]).info["parameters"])
    assert params["ControlNet"] == "edges" and params["Control scale"] == "1.0"
    *_, plain = generate("a red circle", "", 5, 2, 3.0, "DDIM", 1, progress=no_op)
    assert "ControlNet" not in parse_parameters(Image.open(plain[0][0]).info["parameters"])
    monkeypatch.setitem(service_module.CONTROLNETS, "edges", tmp_path / "none")
    assert not service.controllable()


def test_a_control_maps_objects_read_back_with_their_forms_and_boxes():
    """Edge map (outlines bridged and filled) and segmentation map of one scene: each object's form, and its box
    within a pixel and a half, as rendered."""
    from condiff.nets.controlnet import segmentation_map
    from condiff.pipelines.controlnet import map_objects

    objects = [PlacedObject("triangle", "red", 0.25, 0.7, 0.36), PlacedObject("circle", "blue", 0.72, 0.3, 0.3),
               PlacedObject("square", "green", 0.3, 0.22, 0.24)]
    images = render([objects], 64)
    for kind, m in (("edges", edge_map(images)), ("segmentation", segmentation_map(images))):
        found = map_objects(m, kind)
        assert sorted(o.shape for o in found) == sorted(o.shape for o in objects), kind
        for o in objects:
            f = next(f for f in found if f.shape == o.shape)
            assert abs(f.cx - o.cx) <= 1.5 / 64 and abs(f.cy - o.cy) <= 1.5 / 64, (kind, o, f)
            assert abs(f.side - o.s) <= 3 / 64, (kind, o, f)
    assert map_objects(torch.zeros(1, 1, 32, 32), "edges") == []


def test_map_grounding_gives_each_phrase_the_outline_of_its_form_nearest_its_own_box():
    from condiff.pipelines.controlnet import map_grounding
    from condiff.world.oracle import DetectedObject

    def obj(shape, cx, cy, side=0.2):
        return DetectedObject(shape, "unknown", cx, cy, side, side, 1.0, 0.0)

    def box(cx, cy):
        return [cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1]

    found = [obj("circle", 0.2, 0.5), obj("circle", 0.8, 0.5), obj("square", 0.5, 0.2, 0.3)]
    layout = [{"phrase": "red circle", "box": box(0.7, 0.6)}, {"phrase": "blue square", "box": box(0.1, 0.9)},
              {"phrase": "green circle", "box": box(0.9, 0.9)}]
    got = map_grounding(found, layout)
    assert [g["phrase"] for g in got] == ["red circle", "blue square", "green circle"]
    assert got[0]["box"] == pytest.approx(box(0.8, 0.5))  # the circle nearest its own box
    assert got[1]["box"] == pytest.approx([0.35, 0.05, 0.65, 0.35])  # the square, however far
    assert got[2]["box"] == pytest.approx(box(0.2, 0.5))  # the circle left
    # a phrase naming no form (or a form the map lacks) takes the nearest free object; phrases beyond the objects drop
    got = map_grounding(found[:1], [{"phrase": "a star", "box": box(0.5, 0.5)}, {"phrase": "red circle", "box": box(0.9, 0.9)}])
    assert got == [{"phrase": "red circle", "box": pytest.approx(box(0.2, 0.5))}]
    got = map_grounding(found, [{"phrase": "a star", "box": box(0.45, 0.3)}])
    assert got == [{"phrase": "a star", "box": pytest.approx([0.35, 0.05, 0.65, 0.35])}]
    assert map_grounding([], layout) == []


def test_under_a_control_map_the_shipped_defaults_layout_stage_grounds_its_phrases_on_the_maps_outlines():
    """boxes_for (what generate --control, the API and the page draw with): the layout prior's phrases for the caption,
    each on the outline of its form in the edge map of a rendered scene."""
    from condiff.catalogue import CONTROLNETS, DEFAULT_MODEL
    from condiff.pipelines.requests import Control, Txt2ImgRequest, boxes_for
    from condiff.pipelines.text2image import Text2ImagePipeline

    pipe = Text2ImagePipeline.from_pretrained(DEFAULT_MODEL)
    objects = [PlacedObject("square", "blue", 0.25, 0.3, 0.3), PlacedObject("circle", "red", 0.7, 0.7, 0.3)]
    m = edge_map(render([objects], 64))
    req = Txt2ImgRequest(["a red circle and a blue square"] * 2, [0, 1], pipe.defaults,
                         control=Control(m, "edges", 1.0, CONTROLNETS["edges"].name))
    for boxes in boxes_for(pipe, req):
        assert sorted(b["phrase"].removeprefix("a ") for b in boxes) == ["blue square", "red circle"], boxes
        for b in boxes:
            o = next(o for o in objects if o.shape in b["phrase"])
            x0, y0, x1, y1 = b["box"]
            assert abs((x0 + x1) / 2 - o.cx) < 0.03 and abs((y0 + y1) / 2 - o.cy) < 0.03 and abs(x1 - x0 - o.s) < 0.05
