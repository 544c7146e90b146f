"""unCLIP's decoder: the UNet's image-embedding input, its training kind, slerp, and variations / interpolation /
text diffs through `condiff edit`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from condiff.cli import main
from condiff.diffusion.samplers import PerSampleNoise
from condiff.nets.clip import load_clip
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.pipelines.unclip import (
    candidate_seed,
    decode,
    image_embeddings,
    interpolate,
    invert,
    slerp,
    slerp_noise,
    textdiff,
    variations,
)
from condiff.png import read_parameters

CLIP = {"model": "clip", "clip": {"image": {"patch_size": 2, "model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                            "attention_resolutions": [4], "head_channels": 8},
                                  "text": {"width": 32, "layers": 1, "heads": 2}, "embed_dim": 16},
        "data": {"resolution": 16}, "optim": {"steps": 2, "batch_size": 6, "warmup_steps": 1}, "checkpoint_every": 1}


@pytest.fixture(scope="module")
def decoder(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unclip")
    (tmp / "clip.json").write_text(json.dumps(CLIP))
    assert main(["train", "--config", str(tmp / "clip.json"), "--out", str(tmp / "clip")]) == 0
    cfg = json.loads(json.dumps(TINY)) | {"init": {"from_model": str(tiny_model)}, "unclip": {"clip": str(tmp / "clip" / "model")}}
    (tmp / "dec.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp / "dec.json"), "--out", str(tmp / "dec")]) == 0
    return tmp / "dec" / "model", tmp / "clip" / "model"


def test_slerp_closed_forms():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    h = math.sqrt(0.5)
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([[h, h]]))
    third = slerp(a, b, 1 / 3)
    torch.testing.assert_close(third, torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]]))


def test_the_decoder_reads_the_embedding_and_zero_is_the_dropped_one(decoder):
    folder, clip_dir = decoder
    pipe, clip = Text2ImagePipeline.from_pretrained(folder), load_clip(clip_dir)
    assert pipe.unet.cfg.image_embed_dim == 16
    with torch.no_grad():  # make the embedding matter (the 2-step decoder barely moved its zero-initialised layers)
        pipe.unet.image_embed_proj.weight.normal_()
    x = torch.randn(1, 3, 16, 16)
    e = image_embeddings(clip, torch.rand(1, 3, 16, 16) * 2 - 1)
    opts = pipe.defaults.replace(steps=2, guidance_scale=1.0)
    assert not torch.allclose(decode(pipe, e, [""], [0], opts), decode(pipe, -e, [""], [0], opts))
    torch.testing.assert_close(decode(pipe, torch.zeros_like(e), ["a red circle"], [0], opts),
                               pipe(["a red circle"], [0], opts))  # no embedding given: the zero (dropped) one
    three = variations(pipe, clip, x, 3, 5, opts, eta=None, candidates=1)
    torch.testing.assert_close(three[1:2], decode(pipe, image_embeddings(clip, x), [""], [6], opts), rtol=1e-4, atol=1e-5)
    path = interpolate(pipe, clip, x, -x, 3, 0, opts, inverted=False)
    noise = PerSampleNoise([0])((1, *pipe.sample_shape))  # every frame starts from seed 0's noise
    ends = decode(pipe, image_embeddings(clip, torch.cat([x, -x])), [""] * 2, [0, 0], opts, x=torch.cat([noise, noise]))
    torch.testing.assert_close(path[[0, 2]], ends, rtol=1e-4, atol=1e-5)  # the path's ends are the two embeddings


def test_candidate_seeds_draw_different_noise():
    """Candidate 0 is the seed itself; the others draw other noise (torch's CPU generator ignores a seed's high bits,
    so seed + 2^32 would not), and none collides with the seeds of the batch around it."""
    assert candidate_seed(7, 0) == 7
    base = PerSampleNoise([7])((1, 8))
    for k in (1, 2, 3):
        assert not torch.allclose(PerSampleNoise([candidate_seed(7, k)])((1, 8)), base)
    assert torch.allclose(PerSampleNoise([7 + 2 ** 32])((1, 8)), base)  # why a stride of 2^32 does not do
    assert len({candidate_seed(s, k) for s in range(100) for k in range(4)}) == 400


def test_slerp_noise_keeps_the_ends_and_interpolates_the_norm():
    a, b = torch.randn(1, 2, 3, 3), 2 * torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(slerp_noise(a, b, 0.0), a)
    torch.testing.assert_close(slerp_noise(a, b, 1.0), b)
    mid = slerp_noise(a, b, 0.5)
    torch.testing.assert_close(mid.norm(), (a.norm() + b.norm()) / 2)
    cos = lambda u, v: (u.flatten() @ v.flatten()) / (u.norm() * v.norm())  # noqa: E731
    torch.testing.assert_close(cos(mid, a), cos(mid, b))  # halfway along the arc


def test_variations_and_interpolation_from_the_inverted_noise(decoder):
    """The paper's variations: DDIM from the image's inverted x_T with eta, each image's fresh noise from its seed
    alone; interpolation slerps the two inverted x_T and decodes by eta 0, so its ends regenerate the inputs."""
    folder, clip_dir = decoder
    pipe, clip = Text2ImagePipeline.from_pretrained(folder), load_clip(clip_dir)
    with torch.no_grad():
        pipe.unet.image_embed_proj.weight.normal_()
    x, y = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    opts = pipe.defaults.replace(steps=3, guidance_scale=2.0)
    e = image_embeddings(clip, x)
    x_T = invert(pipe, e, x, opts)
    torch.testing.assert_close(invert(pipe, e, x, opts.replace(guidance_scale=7.0)), x_T)  # always CFG 1
    assert not torch.allclose(invert(pipe, -e, x, opts), x_T)  # under the image's embedding
    three = variations(pipe, clip, x, 3, 5, opts, eta=0.7, candidates=1)
    one = decode(pipe, e, [""], [6], opts.replace(sampler="ddim", eta=0.7), x=x_T)
    torch.testing.assert_close(three[1:2], one, rtol=1e-3, atol=1e-4)  # image 1: seed 6, from x's own x_T
    assert (three[0] - three[2]).abs().mean() > 1e-3  # the seeds' fresh noise differs
    with pytest.raises(ValueError, match="eta"):
        variations(pipe, clip, x, 2, 0, opts, eta=0.0)
    with pytest.raises(ValueError, match="candidates"):
        variations(pipe, clip, x, 2, 0, opts, candidates=0)
    # reranking: each image is, of its seed's candidates, the one nearest x's embedding in CLIP
    two = variations(pipe, clip, x, 2, 5, opts, eta=0.7, candidates=3)
    o = opts.replace(sampler="ddim", eta=0.7)
    for i, s in enumerate((5, 6)):
        cands = decode(pipe, e.expand(3, -1), [""] * 3, [candidate_seed(s, k) for k in range(3)], o, x=x_T.expand(3, -1, -1, -1))
        best = (image_embeddings(clip, cands) @ e.T).squeeze(1).argmax()
        torch.testing.assert_close(two[i], cands[best], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(variations(pipe, clip, x, 1, 6, opts, eta=0.7, candidates=3)[0], two[1],
                               rtol=1e-3, atol=1e-4)  # image i depends on its seed alone
    path = interpolate(pipe, clip, x, y, 3, 0, opts)
    ends = [decode(pipe, image_embeddings(clip, im), [""], [0], opts.replace(eta=0.0, sampler="ddim"),
                   x=invert(pipe, image_embeddings(clip, im), im, opts)) for im in (x, y)]
    torch.testing.assert_close(path[[0, 2]], torch.cat(ends), rtol=1e-3, atol=1e-4)  # slerp_noise renormalises
    # text diffs from the inverted noise: frame 0 is x's own reconstruction under the source caption
    o1 = opts.replace(guidance_scale=1.0)
    frames = textdiff(pipe, clip, x, "a red circle", "a blue circle", 3, 0, o1, inverted=True)
    own = decode(pipe, e, ["a red circle"], [0], o1.replace(eta=0.0, sampler="ddim"),
                 x=invert(pipe, e, x, o1, "a red circle"))
    torch.testing.assert_close(frames[:1], own, rtol=1e-3, atol=1e-4)
    assert (frames[2] - frames[0]).abs().mean() > 1e-4  # the embedding moved


def test_edit_variations_interpolate_textdiff_write_grids(decoder, tmp_path, capsys):
    folder, clip_dir = decoder
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src)
    common = ["--model", str(folder), "--clip", str(clip_dir), "--sample-steps", "2"]
    assert main(["edit", "variations", str(src), *common, "--num-images", "3", "--out", str(tmp_path / "v.png")]) == 0
    assert Image.open(tmp_path / "v.png").size == (48, 16)
    params = read_parameters(tmp_path / "v.png")
    assert params["Edit"] == "unCLIP variations" and params["Noise"] == "inverted" and params["CFG scale"] == "1.0"
    assert main(["edit", "variations", str(src), *common, "--from-noise", "--out", str(tmp_path / "n.png")]) == 0
    assert read_parameters(tmp_path / "n.png")["Noise"] == "seeds"
    assert main(["edit", "interpolate", str(src), str(src), *common, "--steps", "4", "--out", str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size == (64, 16)
    assert main(["edit", "textdiff", str(src), *common, "--from", "a red circle", "--to", "a blue circle",
                 "--out", str(tmp_path / "t.png")]) == 0
    assert main(["edit", "textdiff", str(src), *common, "--from", "a red circle", "--to", "a blue circle",
                 "--inverted", "--out", str(tmp_path / "ti.png")]) == 0
    assert read_parameters(tmp_path / "ti.png")["Noise"] == "inverted"
    capsys.readouterr()
    for argv, message in ((["variations", str(src), "--num-images", "0"], "--num-images"),
                          (["textdiff", str(src), "--from", "a red circle", "--to", "a crimson circle"], "crimson"),
                          (["variations", str(tmp_path / "none.png")], "no such file"),
                          (["variations", str(src), "--eta", "0"], "--eta")):
        try:
            code = main(["edit", *argv, *common, "--out", str(tmp_path / "bad.png")])
        except SystemExit as e:  # argparse refuses --num-images 0 (its usage line comes first)
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and message in err[-1] and not (tmp_path / "bad.png").exists()


@pytest.fixture(scope="module")
def prior(decoder, tmp_path_factory):
    """A tiny diffusion prior trained by `condiff train` for a few steps on the tiny CLIP's embeddings."""
    from condiff import components

    tmp = tmp_path_factory.mktemp("prior")
    cfg = {"model": "embedding_prior", "clip": str(decoder[1]), "data": {"resolution": 16},
           "prior": {"width": 32, "layers": 2, "heads": 2}, "optim": {"steps": 3, "batch_size": 8, "warmup_steps": 1},
           "checkpoint_every": 1}
    (tmp / "prior.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp / "prior.json"), "--out", str(tmp / "run")]) == 0
    assert components.guess_type(tmp / "run" / "model") == components.ComponentType.EMBEDDING_PRIOR
    return components.load("embedding_prior", tmp / "run" / "model"), load_clip(decoder[1]), tmp


def test_the_prior_is_causal_and_reads_the_text_through_its_null_tokens(prior):
    from condiff.nets.embedding_prior import clip_text

    net, clip, _ = prior
    text = clip_text(clip, ["a red circle", "two blue squares"])
    x, t = torch.randn(2, 16), torch.tensor([10, 900])
    args = (text["tokens"], text["mask"], text["embed"])
    with torch.no_grad():
        out = net(x, t, *args)
        assert out.shape == (2, 16)
        # the query comes last and sees everything; changing only the noised embedding changes the output
        assert not torch.allclose(net(x + 1, t, *args), out)
        # the null text ignores the caption: two captions, the same output under drop
        drop = torch.ones(2, dtype=torch.bool)
        same_x = x[:1].expand(2, -1)
        a = net(same_x, t[:1].expand(2), *args, drop=drop)
        torch.testing.assert_close(a[0], a[1])
        # causal: the caption's token states cannot see the tokens after them, so the first token's output would
        # not depend on x; checked by the mask itself
        assert net.causal[0, 1:].all() and not net.causal[-1].any()


def test_prior_embeddings_are_unit_per_seed_and_keep_the_best_candidate(prior):
    from condiff.pipelines.unclip import PRIOR_SAMPLING, prior_embeddings
    from condiff.nets.embedding_prior import clip_text
    from condiff.nets.embedding_prior import prior_diffusion

    net, clip, _ = prior
    opts = PRIOR_SAMPLING.replace(steps=4)
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    z = prior_embeddings(net, prior_diffusion(), clip, prompts, [3, 4, 5], opts)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    alone = prior_embeddings(net, prior_diffusion(), clip, prompts[1:2], [4], opts)
    torch.testing.assert_close(alone[0], z[1], atol=1e-5, rtol=1e-5)  # same seed, same embedding, whatever the batch
    one = prior_embeddings(net, prior_diffusion(), clip, prompts, [3, 4, 5], opts, candidates=1)
    four = prior_embeddings(net, prior_diffusion(), clip, prompts, [3, 4, 5], opts, candidates=4)
    z_t = clip_text(clip, prompts)["embed"]
    # candidate 0 is the seed's own sample; the best of 4 (which include the best of 2) scores at least as high
    assert ((four * z_t).sum(-1) >= (z * z_t).sum(-1) - 1e-6).all()
    assert ((z * z_t).sum(-1) >= (one * z_t).sum(-1) - 1e-6).all()
    with pytest.raises(ValueError, match="threshold"):
        prior_embeddings(net, prior_diffusion(), clip, prompts, [3, 4, 5], opts.replace(threshold="static"))


def test_prior_training_resumes_exactly_and_refuses_a_missing_clip(prior, capsys):
    from safetensors.torch import load_file

    _, _, tmp = prior
    cfg = json.loads((tmp / "prior.json").read_text())
    short = dict(cfg, optim=dict(cfg["optim"], steps=2))
    (tmp / "short.json").write_text(json.dumps(short))
    assert main(["train", "--config", str(tmp / "short.json"), "--out", str(tmp / "resumed")]) == 0
    assert main(["train", "--config", str(tmp / "prior.json"), "--out", str(tmp / "resumed"), "--resume"]) == 0
    a = load_file(str(tmp / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp / "resumed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp / "bad.json").write_text(json.dumps(dict(cfg, clip=str(tmp / "nowhere"))))
    assert main(["train", "--config", str(tmp / "bad.json"), "--out", str(tmp / "bad")]) == 2
    assert "is not a condiff CLIP folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def composed(decoder, prior, tmp_path_factory):
    out = tmp_path_factory.mktemp("composed") / "unclip"
    assert main(["compose", "--text2image", str(decoder[0]), "--clip", str(decoder[1]), "--embedding-prior",
                 str(prior[2] / "run" / "model"), "--out", str(out)]) == 0
    return out


def test_composed_unclip_pipeline_generates_per_seed_and_without_its_prior_reads_z_t(decoder, composed, tmp_path, capsys):
    from condiff.pipelines.base import load_pipeline
    from condiff.pipelines.unclip import PRIOR_SEED_OFFSET, UnCLIPPipeline, prior_embeddings

    folder, out = decoder[0], composed
    pipe = load_pipeline(out)
    assert isinstance(pipe, UnCLIPPipeline) and pipe.prior is not None
    with torch.no_grad():  # make the embedding matter (the 2-step decoder barely moved its zero-initialised layers)
        pipe.unet.image_embed_proj.weight.normal_()
    opts = pipe.defaults.replace(steps=2)
    pipe.spec.stage("prior").sampling = pipe.spec.stage("prior").sampling.replace(steps=3)
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    images = pipe(prompts, [7, 8, 9], opts)
    torch.testing.assert_close(pipe(prompts[1:2], [8], opts)[0], images[1], atol=1e-5, rtol=1e-4)  # batch-invariant
    # the image is the decoder's drawing of the prior's embedding for (prompt, seed + offset)
    z = prior_embeddings(pipe.prior, pipe.spec.stage("prior").diffusion, pipe.clip, prompts[:1], [7 + PRIOR_SEED_OFFSET],
                         pipe.spec.stage("prior").sampling)
    torch.testing.assert_close(decode(pipe, z, prompts[:1], [7], opts), images[:1], atol=1e-5, rtol=1e-4)
    base = pipe.without_prior()  # the prior-free baseline: the decoder reads the caption's CLIP text embedding
    with torch.no_grad():
        z_t = pipe.clip.encode_text(prompts[:1])
    torch.testing.assert_close(base(prompts[:1], [7], opts), decode(pipe, z_t, prompts[:1], [7], opts))
    capsys.readouterr()
    assert main(["compose", "--text2image", str(folder), "--out", str(tmp_path / "x")]) == 2
    assert "--layout-prior" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(out), "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert read_parameters(tmp_path / "g.png")["Model"] == "unclip"


def test_api_variations_draws_the_images_embedding_and_refuses_bad_input(composed):
    pytest.importorskip("fastapi")
    import base64
    import io

    from fastapi.testclient import TestClient

    from condiff.images import image_tensor
    from condiff.ui.api import create_api
    from condiff.ui.service import GenerationService

    service = GenerationService(composed)
    client = TestClient(create_api(service))
    buf = io.BytesIO()
    src = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    src.save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    r = client.post("/api/variations", json={"image": png, "num_images": 2, "seed": 3, "steps": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seeds"] == [3, 4] and all("unCLIP variations" in p for p in body["parameters"])
    got = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(im)))) for im in body["images"]])
    opts = service.pipe.defaults.replace(steps=2, guidance_scale=1.0)  # the endpoint's defaults: CFG 1, eta 0.5, 4
    want = variations(service.pipe, service.pipe.clip, image_tensor(src), 2, 3, opts, eta=0.5, candidates=4)
    expect = ((want.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(got.astype(float) - expect).max() <= 1  # the same images as the library's variations
    for bad, status, field in (({"image": png, "num_images": 0}, 422, "num_images"),
                               ({"image": "bm90IGFuIGltYWdl", "num_images": 1}, 400, "image"),
                               ({"image": png, "steps": 2, "sampler": "nope"}, 422, "sampler"),
                               ({"image": png, "steps": 2, "eta": 0}, 400, "eta"),
                               ({"image": png, "steps": 2, "candidates": 17}, 400, "candidates"),
                               ({"image": png, "steps": 2, "sampler": "euler"}, 400, "sampler")):
        r = client.post("/api/variations", json=bad)
        assert r.status_code in (status, 400) and field in r.json()["detail"], r.text


def test_the_unclip_benchmark_runs_end_to_end(composed, ar_prior, tiny_model, tmp_path):
    """benchmarks/unclip.py on the tiny models: every section runs and its report holds what the README quotes."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "unclip.py"
    r = subprocess.run([sys.executable, str(script), "--model", str(composed), "--default", str(tiny_model),
                        "--steps", "2", "--bars", "2", "--prompts-per-category", "1", "--n-per-prompt", "2",
                        "--rows", "default,unclip,unclip_ar,unclip_no_prior", "--ar-prior", str(ar_prior[2] / "run" / "model"),
                        "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "unclip.json").read_text())
    assert report["variations"]["of"] == 2 and report["interpolation"]["of"] == 2
    assert report["variations"]["eta"] == 0.5 and report["variations_from_noise"]["eta"] is None
    assert report["variations"]["candidates"] == 4 and report["variations_from_noise"]["candidates"] == 1
    assert report["interpolation"]["inverted"] and not report["interpolation_from_noise"]["inverted"]
    assert set(report["rows"]) == {"default@3", "unclip@3", "unclip_ar@3", "unclip_no_prior@3"}
    assert all(report["rows"][f"{r}@3"]["prior_seconds_per_sample"] > 0 for r in ("unclip", "unclip_ar"))
    assert "prior_seconds_per_sample" not in report["rows"]["unclip_no_prior@3"]
    assert all(0 <= row["overall"]["accuracy"] <= 1 and row["diversity_pixels"] > 0 for row in report["rows"].values())
    assert (tmp_path / "diversity.png").is_file() and (tmp_path / "variations.png").is_file()
    again = tmp_path / "again"
    base = [sys.executable, str(script), "--model", str(composed), "--default", str(tiny_model), "--bars", "0",
            "--prompts-per-category", "1", "--n-per-prompt", "2", "--rows", "default", "--out-dir", str(again),
            "--reuse-rows", str(tmp_path / "unclip.json")]
    r = subprocess.run(base + ["--steps", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]  # the default's row is copied, not measured again
    row = json.loads((again / "unclip.json").read_text())["rows"]["default@3"]
    assert row["overall"] == report["rows"]["default@3"]["overall"] and row["reused_from"].endswith("unclip.json")
    r = subprocess.run(base + ["--steps", "3"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "steps=2" in r.stderr  # another measurement: refused


@pytest.fixture(scope="module")
def ar_prior(decoder, tmp_path_factory):
    """A tiny autoregressive prior trained by `condiff train` for a few steps on the tiny CLIP's embeddings."""
    from condiff import components

    tmp = tmp_path_factory.mktemp("ar_prior")
    cfg = {"model": "ar_prior", "clip": str(decoder[1]), "data": {"resolution": 16}, "codec_images": 64,
           "prior": {"width": 32, "layers": 2, "heads": 2, "buckets": 64, "variance_kept": 0.9},
           "optim": {"steps": 3, "batch_size": 8, "warmup_steps": 1}, "checkpoint_every": 1}
    (tmp / "prior.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp / "prior.json"), "--out", str(tmp / "run")]) == 0
    assert components.guess_type(tmp / "run" / "model") == components.ComponentType.AR_PRIOR
    return components.load("ar_prior", tmp / "run" / "model"), load_clip(decoder[1]), tmp


def test_the_ar_codec_is_the_pca_of_its_fitting_set_binned_uniformly():
    from condiff.nets.ar_prior import ARPrior, ARPriorConfig, fit_codec

    g = torch.Generator().manual_seed(0)
    # embeddings that vary along 2 directions only (and a tiny third): 2 components hold 99 % of the variance
    basis = torch.linalg.qr(torch.randn(8, 3, generator=g))[0].T  # (3, 8) orthonormal
    c = torch.randn(500, 3, generator=g) * torch.tensor([1.0, 0.5, 0.01])
    z = torch.nn.functional.normalize(torch.ones(8) * 3 + c @ basis, dim=-1)
    codec = fit_codec(z, z, 0.99, 5)
    assert len(codec.basis) == 2
    torch.testing.assert_close(codec.dots, torch.ones(5))  # z . z = 1 for unit vectors
    prior = ARPrior(ARPriorConfig(embed_dim=8, text_width=4, max_text=3, components=2, buckets=256, width=8,
                                  layers=1, heads=1, quantiles=5))
    prior.set_codec(codec)
    codes = prior.encode(z)
    assert codes.min() == 0 and codes.max() == 255  # the extremes of the fitting set land in the end bins
    # decoding a bin gives its centre: within half a bin of each component, so nearly the embedding back
    assert ((prior.decode(codes) * z).sum(-1) > 0.99).all()
    assert prior.dot_bucket(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
    torch.testing.assert_close(prior.dot_at(torch.tensor([0.0, 0.5, 1.0])), torch.ones(3))


def test_ar_prior_predicts_each_code_from_the_ones_before_and_samples_per_seed(ar_prior):
    from condiff.nets.embedding_prior import clip_text
    from condiff.pipelines.unclip import ar_prior_embeddings, categorical

    net, clip, _ = ar_prior
    K = net.cfg.components
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    text = clip_text(clip, prompts)
    codes = torch.randint(0, net.cfg.buckets, (3, K - 1))
    dot = torch.tensor([60, 61, 62])
    args = (text["tokens"], text["mask"], text["embed"], dot)
    with torch.no_grad():
        logits = net(codes, *args)
        assert logits.shape == (3, K, net.cfg.buckets)
        changed = codes.clone()
        changed[:, -1] = (changed[:, -1] + 1) % net.cfg.buckets
        other = net(changed, *args)  # a code changes the predictions after it only
        torch.testing.assert_close(other[:, :-1], logits[:, :-1])
        assert not torch.allclose(other[:, -1], logits[:, -1])
        drop = torch.ones(3, dtype=torch.bool)  # the null text ignores the caption and the dot product
        a = net(codes[:1].expand(3, -1), *args, drop=drop)
        torch.testing.assert_close(a[0], a[2])
    # inverse-CDF draws: u below the first bucket's mass gives 0, u near 1 the last bucket
    assert categorical(torch.zeros(2, 4), torch.tensor([0.1, 0.99]), 1.0).tolist() == [0, 3]
    z = ar_prior_embeddings(net, clip, prompts, [3, 4, 5])
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(ar_prior_embeddings(net, clip, prompts[1:2], [4])[0], z[1], atol=1e-5, rtol=1e-5)
    four = ar_prior_embeddings(net, clip, prompts, [3, 4, 5], candidates=4)
    one = ar_prior_embeddings(net, clip, prompts, [3, 4, 5], candidates=1)
    z_t = text["embed"]
    assert ((four * z_t).sum(-1) >= (z * z_t).sum(-1) - 1e-6).all()
    assert ((z * z_t).sum(-1) >= (one * z_t).sum(-1) - 1e-6).all()
    with pytest.raises(ValueError, match="temperature"):
        ar_prior_embeddings(net, clip, prompts, [3, 4, 5], temperature=0)


def test_ar_prior_training_resumes_exactly_and_composes_into_an_unclip_pipeline(ar_prior, decoder, tmp_path):
    from safetensors.torch import load_file

    from condiff.pipelines.base import load_pipeline
    from condiff.pipelines.unclip import PRIOR_SEED_OFFSET, UnCLIPPipeline, ar_prior_embeddings

    net, _, tmp = ar_prior
    cfg = json.loads((tmp / "prior.json").read_text())
    (tmp / "short.json").write_text(json.dumps(dict(cfg, optim=dict(cfg["optim"], steps=2))))
    assert main(["train", "--config", str(tmp / "short.json"), "--out", str(tmp / "resumed")]) == 0
    assert main(["train", "--config", str(tmp / "prior.json"), "--out", str(tmp / "resumed"), "--resume"]) == 0
    a = load_file(str(tmp / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and "basis" in a and all(torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "unclip_ar"
    assert main(["compose", "--text2image", str(decoder[0]), "--clip", str(decoder[1]), "--embedding-prior",
                 str(tmp / "run" / "model"), "--out", str(out)]) == 0
    pipe = load_pipeline(out)
    assert isinstance(pipe, UnCLIPPipeline) and pipe.prior.cfg == net.cfg
    with torch.no_grad():
        pipe.unet.image_embed_proj.weight.normal_()
    opts = pipe.defaults.replace(steps=2)
    z = ar_prior_embeddings(pipe.prior, pipe.clip, ["a red circle"], [7 + PRIOR_SEED_OFFSET])
    torch.testing.assert_close(pipe(["a red circle"], [7], opts), decode(pipe, z, ["a red circle"], [7], opts),
                               atol=1e-5, rtol=1e-4)
    assert main(["compose", "--text2image", str(decoder[0]), "--clip", str(decoder[1]), "--embedding-prior",
                 str(decoder[1]), "--out", str(tmp_path / "bad")]) == 2
    from condiff import components  # an fp16 export keeps the codec in float32, the network in float16

    components.save(net, tmp_path / "half", torch.float16)
    half = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert {k: half[k].dtype for k in ("mean", "basis", "lo", "hi", "dots")} == dict.fromkeys(
        ("mean", "basis", "lo", "hi", "dots"), torch.float32) and half["position"].dtype == torch.float16
    assert torch.equal(components.load("ar_prior", tmp_path / "half").basis, net.basis)
