"""Latent diffusion: KL and VQ autoencoders (closed-form KL, nearest codes, EMA codebook, dead-code restarts, the
measured scale factor, exact resume), condiff eval autoencoder, and the latent text-to-image path with a frozen
pretrained encoder, on world scenes and on a captioned image folder."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from condiff import components
from condiff.cli import main
from condiff.nets.autoencoder import Autoencoder, AutoencoderConfig, VectorQuantizer, gaussian_kl, perplexity
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.train.tasks import load_train_config
from condiff.nets.pretrained_text import FrozenTextCache
from condiff.train.trainer import train

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_train import _make_folder  # noqa: E402

TINY_AE = {"model": "autoencoder", "data": {"resolution": 16}, "autoencoder": {"channels": 8, "channel_mult": [1, 2]},
           "optim": {"steps": 3, "batch_size": 4, "warmup_steps": 1}, "checkpoint_every": 1, "sample_every": 0,
           "scale_images": 8}


def _write(path, cfg):
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ae")
    assert main(["train", "--config", str(_write(tmp / "ae.json", TINY_AE)), "--out", str(tmp / "run")]) == 0
    return tmp / "run" / "model"


def test_gaussian_kl_is_the_closed_form():
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    want = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(gaussian_kl(mean, logvar), want, atol=1e-5)
    assert gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0


def test_vector_quantizer_nearest_codes_ema_and_dead_code_restart():
    vq = VectorQuantizer(size=4, dim=2, decay=0.0)
    vq.codebook.copy_(torch.tensor([[0.0, 0], [1, 0], [0, 1], [9, 9]]))
    z = torch.tensor([[0.1, 0.0], [0.9, 0.2], [1.1, -0.1], [0.0, 0.8]]).T.reshape(1, 2, 2, 2)  # (B, D, H, W)
    idx = vq.indices(z)
    assert idx.flatten().tolist() == torch.cdist(z.flatten(2)[0].T, vq.codebook).argmin(1).tolist() == [0, 1, 1, 2]
    z_q, _ = vq(z.requires_grad_(True))
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through: the gradient passes unchanged
    vq.ema_update(z.detach(), idx, torch.Generator().manual_seed(0))  # decay 0: each used code is its cluster's mean
    assert torch.allclose(vq.codebook[1], torch.tensor([1.0, 0.05]), atol=1e-4)
    dead = vq.codebook[3]
    assert any(torch.allclose(dead, v) for v in z.detach().flatten(2)[0].T)  # code 3 was unused: restarted on a z
    assert perplexity(torch.tensor([0, 1, 2, 3]), 4) == pytest.approx(4) and perplexity(torch.zeros(5, dtype=torch.long), 4) == 1


def test_autoencoder_trains_saves_a_measured_scale_factor_and_loads(tiny_ae):
    cfg = json.loads((tiny_ae / "config.json").read_text())
    ae = components.load("autoencoder", tiny_ae)
    state = load_file(str(tiny_ae / "model.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in ae.state_dict().items())
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (8, 4, 8, 8) and ae.decode(z).shape == x.shape
    raw = ae.moments(x)[0]
    assert cfg["scale_factor"] != 1.0 and torch.allclose(z, raw * cfg["scale_factor"])


@pytest.mark.parametrize("kind,precision", [("kl", "fp32"), ("vq", "fp32"), ("vq", "bf16")])
def test_autoencoder_resume_is_exact(tmp_path, kind, precision):
    """Also under bf16 autocast, as the shipped configs train: the VQ codebook's distances and EMA stay float32."""
    cfg = {**TINY_AE, "autoencoder": {**TINY_AE["autoencoder"], "kind": kind, "codebook_size": 16},
           "precision": precision}
    path = _write(tmp_path / "c.json", cfg)
    straight = train(load_train_config(path), tmp_path / "a", workers=0).ema.model
    short = load_train_config(path)
    short.optim.steps = 2
    train(short, tmp_path / "b", workers=0)
    resumed = train(load_train_config(path), tmp_path / "b", resume=True, workers=0).ema.model
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_autoencoder_configs_are_refused_before_training(tmp_path, capsys):
    bad = {**TINY_AE, "data": {"resolution": 17}}
    assert main(["train", "--config", str(_write(tmp_path / "b.json", bad)), "--out", str(tmp_path / "r")]) == 2
    assert "not divisible by the autoencoder's factor 2" in capsys.readouterr().err


def test_eval_autoencoder_reports_oracle_psnr_and_fd(tiny_ae, tmp_path, capsys):
    assert main(["eval", "autoencoder", "--model", str(tiny_ae), "--n", "3", "--out-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "autoencoders.json").read_text())["run"]
    assert 0 <= report["oracle"] <= 1 and report["psnr"] > 0 and report["fd_pixels"] >= 0 and "fd_clip" in report
    assert (tmp_path / "run_grid.png").is_file() and "| run | kl-f2 | 4x8x8 |" in capsys.readouterr().out


def test_frozen_text_cache_equals_direct_encoding(tiny_bert):
    from condiff.nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder

    enc = PretrainedTextEncoder(PretrainedTextConfig(source=str(tiny_bert), max_length=16, width=32))
    cache = FrozenTextCache(enc)
    texts = ["a red circle", "", "a teal box", "a red circle"]
    cached, direct = cache.encode(texts, torch.device("cpu")), enc.encode(texts)
    assert len(cache.states) == 3 and all(torch.equal(cached[k], direct[k]) for k in direct)


def _latent_config(tmp_path, tiny_ae, tiny_bert, **over):
    cfg = {"seed": 0, "data": {"resolution": 16}, "autoencoder": str(tiny_ae),
           "pretrained_text": {"source": str(tiny_bert), "max_length": 16, "width": 32},
           "unet": {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
                    "head_channels": 16},
           "pipeline": {"schedule": {"num_timesteps": 100}},
           "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1}, "log_every": 1, "sample_every": 0,
           "checkpoint_every": 1, **over}
    return _write(tmp_path / "latent.json", cfg)


@pytest.fixture(scope="module")
def tiny_latent(tiny_ae, tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latent")
    assert main(["train", "--config", str(_latent_config(tmp, tiny_ae, tiny_bert)), "--out", str(tmp / "run")]) == 0
    return tmp / "run" / "model"


def test_latent_pipeline_composes_frozen_text_unet_and_decoder(tiny_latent):
    spec = json.loads((tiny_latent / "pipeline.json").read_text())
    assert [(c["name"], c["type"]) for c in spec["components"]] == [
        ("text_encoder", "pretrained_text_encoder"), ("unet", "unet"), ("autoencoder", "autoencoder")]
    assert sorted(p.name for p in (tiny_latent / "text_encoder").iterdir()) == ["config.json"]  # frozen: config only
    pipe = Text2ImagePipeline.from_pretrained(tiny_latent)
    assert pipe.sample_shape == (4, 8, 8) and pipe.resolution == 16
    both = pipe(["a red circle", "a crimson teal box"], [3, 4])
    one = pipe(["a crimson teal box"], [4])
    assert both.shape == (2, 3, 16, 16) and torch.allclose(both[1:], one, atol=1e-5)  # seed, not batch position


def test_latent_models_sample_without_x0_clipping_from_a_well_conditioned_first_step(tiny_latent, tmp_path, capsys):
    """Static or dynamic thresholds clip x0_hat to pixel range: wrong for latents (unit variance, not [-1, 1])."""
    from condiff.diffusion.sampling import SamplingOptions

    pipe = Text2ImagePipeline.from_pretrained(tiny_latent)
    assert (pipe.defaults.threshold.value, pipe.defaults.schedule.value) == ("none", "leading")
    with pytest.raises(ValueError, match="threshold: static clips x0_hat to the pixel range"):
        pipe.check(["a red circle"], SamplingOptions(threshold="static"))
    out = tmp_path / "o.png"
    assert main(["generate", "a red circle", "--model", str(tiny_latent), "--steps", "2", "--out", str(out)]) == 0
    from condiff.png import read_parameters
    p = read_parameters(out)
    assert (p["Threshold"], p["Schedule type"]) == ("none", "leading")  # what the command left out: the model's
    assert main(["generate", "a red circle", "--model", str(tiny_latent), "--threshold", "dynamic", "--out", str(out)]) == 2
    assert "use --threshold none" in capsys.readouterr().err


def test_generate_accepts_open_vocabulary_and_refuses_empty_prompts(tiny_latent, tmp_path, capsys):
    out = tmp_path / "o.png"
    assert main(["generate", "a zebra next to a teal box", "--model", str(tiny_latent), "--steps", "2", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["generate", "  ", "--model", str(tiny_latent), "--steps", "2", "--out", str(out)]) == 2
    assert "prompt: must be a non-empty string" in capsys.readouterr().err


def test_a_captioned_folder_trains_the_autoencoder_and_the_latent_model(tmp_path, tiny_bert):
    data = _make_folder(tmp_path / "data")
    ae_cfg = _write(tmp_path / "ae.json", {**TINY_AE, "data": {"source": "imagefolder", "path": str(data), "resolution": 16}})
    assert main(["train", "--config", str(ae_cfg), "--out", str(tmp_path / "ae")]) == 0
    latent = _latent_config(tmp_path, tmp_path / "ae" / "model", tiny_bert)
    assert main(["train", "--config", str(latent), "--data", str(data), "--out", str(tmp_path / "ldm")]) == 0
    images = Text2ImagePipeline.from_pretrained(tmp_path / "ldm" / "model")(["A crimson picture, photo number 1."], [0])
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


@pytest.mark.parametrize("method", ["classifier", "clip", "clip_x0", "contrastive"])
def test_every_judge_guides_a_latent_model_through_the_decoder(tiny_latent, method):
    from condiff.diffusion.sampling import SamplingOptions
    from condiff.pipelines.guidance import GuidanceMethod, GuidanceOptions, make_guide

    pipe = Text2ImagePipeline.from_pretrained(tiny_latent)
    opts = SamplingOptions(steps=3, guidance_scale=1.0)
    prompt = ["a red circle to the left of a blue square"]
    plain = pipe(prompt, [0], opts)
    guided = pipe(prompt, [0], opts, guide=make_guide(GuidanceOptions(GuidanceMethod(method), 50.0)))
    assert torch.isfinite(guided).all() and not torch.allclose(plain, guided, atol=1e-4)


def test_clip_optimised_x_T_on_a_latent_model(tiny_latent):
    from condiff.diffusion.sampling import SamplingOptions
    from condiff.pipelines.guidance import NoiseOptimization, make_initializer

    pipe = Text2ImagePipeline.from_pretrained(tiny_latent)
    init = make_initializer(NoiseOptimization(iters=2, chain_steps=2))
    out = pipe(["a red circle"], [0], SamplingOptions(steps=2), init=init)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_autoencoder_fine_tunes_from_a_saved_one(tmp_path):
    """init.from_model starts an autoencoder run from saved weights; another architecture is one ConfigError."""
    from condiff.config import ConfigError
    from condiff.io import save_component
    from condiff.nets.autoencoder import Autoencoder, AutoencoderConfig
    from condiff.train.tasks.autoencoder import AutoencoderTask, AutoencoderTrainConfig

    ae_cfg = AutoencoderConfig(resolution=16, channels=8, channel_mult=[1, 2], num_res_blocks=1)
    saved = Autoencoder(ae_cfg)
    save_component(saved, ae_cfg, tmp_path / "ae")
    cfg = AutoencoderTrainConfig(autoencoder=AutoencoderConfig(resolution=16, channels=8, channel_mult=[1, 2],
                                                               num_res_blocks=1))
    cfg.data.resolution = 16
    cfg.init.from_model = str(tmp_path / "ae")
    model = AutoencoderTask().build(cfg, None, resume=False)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.state_dict().items())
    fresh = AutoencoderTask().build(cfg, None, resume=True)  # a resumed run loads its own checkpoint instead
    assert not all(torch.equal(v, saved.state_dict()[k]) for k, v in fresh.state_dict().items())
    cfg.autoencoder.channels = 16
    with pytest.raises(ConfigError, match="differs .* in channels"):
        AutoencoderTask().build(cfg, None, resume=False)


def test_the_latent_cache_gives_each_image_its_own_latent_and_encodes_it_once():
    from condiff.train.tasks.text2image import LatentCache
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(resolution=16, channels=8, channel_mult=[1, 2], latent_channels=3)).eval()
    calls = []

    def encode(x):
        calls.append(len(x))
        return ae.encode(x)

    images = torch.rand(5, 3, 16, 16) * 2 - 1
    cache = LatentCache(encode)
    with torch.no_grad():
        first = cache(images[[0, 1, 2]])
        second = cache(images[[2, 3, 2, 0]])
        alone = torch.cat([ae.encode(images[i:i + 1]) for i in (2, 3, 2, 0)])
    assert torch.equal(second, alone) and torch.equal(first[2], second[0])
    assert calls == [1, 1, 1, 1]  # images 0, 1, 2, then only 3 was new
    tiny = LatentCache(encode, max_mb=0)  # nothing fits: every image is encoded every time, still right
    with torch.no_grad():
        assert torch.equal(tiny(images[[2, 3, 2, 0]]), alone) and tiny.latents == {}
