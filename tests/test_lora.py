"""LoRA (issue 36): condiff's adapters against the closed form and PEFT's own layers, files in diffusers/PEFT's and
kohya's layouts, and a LoRA that diffusers + PEFT make on a tiny Stable Diffusion model drawing diffusers' image."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from condiff.cli import main
from condiff.formats import lora as lora_format
from condiff.nets import lora

peft = pytest.importorskip("peft")


def _randomised(root: nn.Module, name: str, seed: int = 0) -> None:
    """B is zero in a fresh adapter: give it values, so that a test of the update can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in lora.adapters(root, name).values():
            a.B.weight.copy_(torch.randn(a.B.weight.shape, generator=g) * 0.1)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv1d(8, 8, 1), nn.Linear(6, 5))


def _run(net, x2, x1, x0):
    return net[0](x2), net[1](x1), net[2](x0)


INPUTS = (torch.randn(2, 3, 6, 6), torch.randn(2, 8, 7), torch.randn(4, 6))


def test_a_fresh_adapter_changes_nothing_and_weight_zero_is_the_base_exactly():
    net = _net()
    base = _run(net, *INPUTS)
    assert lora.add_adapter(net, "a", ["0", "1", "2"], rank=2) == ["0", "1", "2"]
    assert all(torch.equal(a, b) for a, b in zip(base, _run(net, *INPUTS)))  # B = 0 at the start
    _randomised(net, "a")
    assert not torch.allclose(base[2], _run(net, *INPUTS)[2])
    lora.set_weight(net, "a", 0.0)
    assert all(torch.equal(a, b) for a, b in zip(base, _run(net, *INPUTS)))


def test_the_update_is_the_closed_form_and_merged_equals_unmerged():
    net = _net()
    lora.add_adapter(net, "a", ["0", "1", "2"], rank=3, alpha=6.0)
    lora.add_adapter(net, "b", ["2"], rank=1)
    _randomised(net, "a"), _randomised(net, "b", seed=1)
    lora.set_weight(net, "a", 0.7)
    lin = net[2]
    a, b = lin.lora_adapters["a"], lin.lora_adapters["b"]
    W = lin.weight + 0.7 * 2.0 * a.B.weight @ a.A.weight + 1.0 * b.B.weight @ b.A.weight  # alpha / r = 6 / 3
    assert torch.allclose(_run(net, *INPUTS)[2], INPUTS[2] @ W.T + lin.bias, atol=1e-5)
    unmerged = _run(net, *INPUTS)
    lora.merge(net)
    assert all(torch.allclose(u, m, atol=1e-5) for u, m in zip(unmerged, _run(net, *INPUTS)))
    lora.unmerge(net)
    assert all(torch.allclose(u, m, atol=1e-5) for u, m in zip(unmerged, _run(net, *INPUTS)))


def test_condiffs_adapter_is_peft_s_lora_layer():
    """The same A and B in PEFT's LoraModel give the same outputs for Linear and Conv2d layers."""
    net = _net()
    theirs = peft.get_peft_model(_net(), peft.LoraConfig(r=2, lora_alpha=5, target_modules=["0", "2"]))
    lora.add_adapter(net, "a", ["0", "2"], rank=2, alpha=5.0)
    _randomised(net, "a")
    state = peft.get_peft_model_state_dict(theirs)
    for name, a in lora.adapters(net, "a").items():
        state[f"base_model.model.{name}.lora_A.weight"] = a.A.weight.detach()
        state[f"base_model.model.{name}.lora_B.weight"] = a.B.weight.detach()
    peft.set_peft_model_state_dict(theirs, state)
    ours, peers = _run(net, *INPUTS), _run(theirs.base_model.model, *INPUTS)
    assert torch.allclose(ours[0], peers[0], atol=1e-6) and torch.allclose(ours[2], peers[2], atol=1e-6)


def test_a_file_round_trips_in_peft_layout_and_kohya_layout_loads_the_same(tmp_path):
    net = _net()
    lora.add_adapter(net, "a", ["0", "1", "2"], rank=2, alpha=4.0)
    _randomised(net, "a")
    want = _run(net, *INPUTS)
    path = tmp_path / "a.safetensors"
    lora_format.write(path, {"unet": lora_format.entries_of(net, "a")})
    keys = set(load_file(path))
    assert "unet.2.lora_A.weight" in keys and "unet.0.lora_B.weight" in keys and len(keys) == 6
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["lora_adapter_metadata"])["unet.lora_alpha"] == 4.0
    fresh = _net()
    lora_format.apply({"unet": fresh}, [lora_format.LoRASpec(str(path))])
    assert all(torch.equal(a, b) for a, b in zip(want, _run(fresh, *INPUTS)))
    kohya = {}  # the same adapter as kohya's sd-scripts write it
    for k, v in load_file(path).items():
        layer = k[len("unet."):].rsplit(".lora_", 1)[0]
        kohya[f"lora_unet_{layer}.{'lora_down' if '.lora_A.' in k else 'lora_up'}.weight"] = v
        kohya[f"lora_unet_{layer}.alpha"] = torch.tensor(4.0)
    save_file(kohya, tmp_path / "k.safetensors")
    fresh = _net()
    lora_format.apply({"unet": fresh}, [lora_format.LoRASpec(str(tmp_path / "k.safetensors"))])
    assert all(torch.equal(a, b) for a, b in zip(want, _run(fresh, *INPUTS)))


def test_spec_parsing():
    assert lora_format.LoRASpec.parse("a.safetensors:0.5") == lora_format.LoRASpec("a.safetensors", 0.5)
    assert lora_format.LoRASpec.parse("C:/x/a.safetensors") == lora_format.LoRASpec("C:/x/a.safetensors", 1.0)
    assert lora_format.LoRASpec.parse("dir/a.safetensors") == lora_format.LoRASpec("dir/a.safetensors", 1.0)


# --- Stable Diffusion: a LoRA made by diffusers + PEFT -------------------------------------------------------------

diffusers = pytest.importorskip("diffusers")
from diffusers import StableDiffusionPipeline  # noqa: E402

from test_stable_diffusion import PROMPT, tiny_sd  # noqa: E402


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny SD folder and a LoRA on its UNet's attention (to_q/k/v/out), made by diffusers' add_adapter (PEFT) and
    saved by StableDiffusionPipeline.save_lora_weights, with random B so that it changes the image."""
    folder = tiny_sd(tmp_path_factory.mktemp("sd") / "sd1")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    torch.manual_seed(1)
    pipe.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                          init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=peft.get_peft_model_state_dict(pipe.unet),
                                              unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict())
    return folder, out / lora_format.WEIGHT_NAME


def _diffusers(folder: Path, lora_file: Path | None, scale: float = 1.0) -> np.ndarray:
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    if lora_file is not None:
        pipe.load_lora_weights(lora_file.parent, weight_name=lora_file.name, adapter_name="x")
        pipe.set_adapters(["x"], [scale])
    image = pipe(PROMPT, num_inference_steps=10, guidance_scale=7.5, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    return (image * 255).round().astype(int)


def _condiff(folder: Path, tmp_path: Path, *lora_args: str) -> np.ndarray:
    out = tmp_path / "c.png"
    argv = ["generate", PROMPT, "--model", str(folder), "--sampler", "ddim", "--steps", "10", "--size", "64",
            "--out", str(out)]
    assert main(argv + [a for x in lora_args for a in ("--lora", x)]) == 0
    return np.asarray(Image.open(out)).astype(int), Image.open(out).info["parameters"]


def test_a_diffusers_peft_lora_draws_diffusers_image_on_stable_diffusion(sd_lora, tmp_path):
    folder, lora_file = sd_lora
    base, _ = _condiff(folder, tmp_path)
    ours, info = _condiff(folder, tmp_path, f"{lora_file}:0.6")
    theirs = _diffusers(folder, lora_file, 0.6)
    assert np.abs(ours - theirs).max() <= 3
    assert np.abs(ours - base).mean() > 5  # the LoRA changed the image: the bar above could fail
    assert 'Lora hashes: "pytorch_lora_weights: ' in info and 'Lora weights: "pytorch_lora_weights: 0.6"' in info
    zero, _ = _condiff(folder, tmp_path, f"{lora_file}:0")
    assert np.array_equal(zero, base)


def test_a_text_encoder_lora_is_the_closed_form_update_of_clip_s_weights(sd_lora, tmp_path):
    """A LoRA on CLIP's q/v projections in diffusers' layout (text_encoder.text_model...): condiff's image equals
    diffusers' from a copy of the model whose weights hold W + (alpha / r) B A."""
    folder, _ = sd_lora
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    g, tensors, r, alpha = torch.Generator().manual_seed(2), {}, 2, 3.0
    with torch.no_grad():
        for name, layer in pipe.text_encoder.named_modules():
            if name.endswith(("q_proj", "v_proj")):
                A = torch.randn(r, layer.in_features, generator=g) * 0.3
                B = torch.randn(layer.out_features, r, generator=g) * 0.3
                tensors[f"text_encoder.{name}.lora_A.weight"], tensors[f"text_encoder.{name}.lora_B.weight"] = A, B
                layer.weight += alpha / r * B @ A
    meta = {"lora_adapter_metadata": json.dumps({"text_encoder.r": r, "text_encoder.lora_alpha": alpha})}
    save_file(tensors, tmp_path / "te.safetensors", metadata=meta)
    pipe.save_pretrained(tmp_path / "merged")
    ours, _ = _condiff(folder, tmp_path, str(tmp_path / "te.safetensors"))
    base, _ = _condiff(folder, tmp_path)
    assert np.abs(ours - _diffusers(tmp_path / "merged", None)).max() <= 3
    assert np.abs(ours - base).mean() > 5


def test_the_same_lora_in_kohya_layout_draws_the_same_image(sd_lora, tmp_path):
    folder, lora_file = sd_lora
    with safe_open(str(lora_file), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    kohya = {}
    for k, v in load_file(lora_file).items():
        comp, rest = k.split(".", 1)
        layer = rest.rsplit(".lora_", 1)[0].replace(".", "_")
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[comp]
        kohya[f"{prefix}{layer}.{'lora_down' if '.lora_A.' in k else 'lora_up'}.weight"] = v
        kohya[f"{prefix}{layer}.alpha"] = torch.tensor(float(meta[f"{comp}.lora_alpha"]))
    save_file(kohya, tmp_path / "kohya.safetensors")
    ours, _ = _condiff(folder, tmp_path, str(tmp_path / "kohya.safetensors"))
    peft_layout, _ = _condiff(folder, tmp_path, str(lora_file))
    assert np.abs(ours - peft_layout).max() <= 1


def test_bad_lora_files_fail_in_one_line_and_nothing_is_drawn(sd_lora, tmp_path, capsys):
    folder, lora_file = sd_lora
    (tmp_path / "x.bin").write_bytes(b"\x80\x04not read")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    save_file({"unet.down_blocks.0.resnets.0.conv1.lora_A.weight": torch.zeros(2, 5, 3, 3),
               "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": torch.zeros(7, 2, 1, 1)}, tmp_path / "wrong.safetensors")
    save_file({"unet.no.such.layer.lora_A.weight": torch.zeros(2, 4),
               "unet.no.such.layer.lora_B.weight": torch.zeros(4, 2)}, tmp_path / "missing.safetensors")
    save_file({"vae.decoder.conv_in.lora_A.weight": torch.zeros(2, 4)}, tmp_path / "half.safetensors")
    cases = {"x.bin": "pickle", "junk.safetensors": "not a readable safetensors", "nothere.safetensors": "no such file",
             "wrong.safetensors": "does not fit unet.down_blocks.0.resnets.0.conv1",
             "missing.safetensors": "no Linear or convolution layer named", "half.safetensors": "has only A"}
    for name, message in cases.items():
        capsys.readouterr()
        argv = ["generate", PROMPT, "--model", str(folder), "--steps", "2", "--size", "64",
                "--out", str(tmp_path / "o.png"), "--lora", str(tmp_path / name)]
        assert main(argv) != 0, name
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (name, err)
    assert not (tmp_path / "o.png").exists()


# --- training a LoRA with condiff train ----------------------------------------------------------------------------

def test_condiff_train_makes_a_lora_file_that_changes_the_model_at_weight_1_and_nothing_at_0(tiny_model, tmp_path):
    from conftest import TINY

    from condiff.pipelines.text2image import Text2ImagePipeline

    cfg = json.loads(json.dumps(TINY)) | {"init": {"from_model": str(tiny_model)},
                                           "lora": {"rank": 2, "targets": ["qkv", "context_kv", "proj"]}}
    cfg["optim"] |= {"steps": 3, "lr": 0.05}
    (tmp_path / "lora.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "lora.json"), "--out", str(tmp_path / "run")]) == 0
    file = tmp_path / "run" / "model" / lora_format.WEIGHT_NAME
    keys = set(load_file(file))
    assert keys and all(k.startswith("unet.") and ".lora_" in k for k in keys)  # the adapter alone, no base weights
    with safe_open(str(file), "pt") as f:
        assert f.metadata()["condiff_base_model"] == str(tiny_model)  # not shipped: the path as given
    assert file.stat().st_size < 200_000

    def draw(*specs):
        pipe = Text2ImagePipeline.from_pretrained(tiny_model)
        lora_format.apply(pipe.parts, [lora_format.LoRASpec(str(tmp_path / "run" / "model"), w) for w in specs])
        from condiff.diffusion.sampling import SamplingOptions
        return pipe(["a red circle"], [0], SamplingOptions(steps=5, threshold="none"))

    base, zero, one = draw(), draw(0.0), draw(1.0)
    assert torch.equal(base, zero)
    assert (one - base).abs().mean() > 1e-3  # three steps at lr 0.05 moved B away from zero
    # the base model's own weights did not train: the checkpoint's base UNet equals the saved one
    saved = load_file(next((tiny_model / "unet").glob("*.safetensors")))
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    ckpt = load_file(tmp_path / "run" / "checkpoints" / latest / "state.safetensors")
    for k, v in saved.items():
        assert torch.equal(ckpt[f"model.unet.{k}"].to(v.dtype), v), k


def test_a_lora_config_without_a_base_or_with_no_matching_layer_fails_in_one_line(tmp_path, capsys):
    from conftest import TINY

    for extra, message in [({"lora": {"rank": 2}}, "init.from_model"),
                           ({"lora": {"rank": 0}, "init": {"from_model": "x"}}, "lora.rank must be a positive integer")]:
        (tmp_path / "c.json").write_text(json.dumps(TINY | extra))
        capsys.readouterr()
        assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_peft_metadata_alpha_pattern_rslora_and_hostile_values(tmp_path):
    A, B = torch.randn(4, 6), torch.randn(5, 4)
    tensors = {"unet.2.lora_A.weight": A, "unet.2.lora_B.weight": B}

    def entry(meta):
        save_file(tensors, tmp_path / "m.safetensors", metadata={"lora_adapter_metadata": json.dumps(meta)})
        return lora_format.read(tmp_path / "m.safetensors")[0]["unet"]["2"]

    assert entry({"unet.lora_alpha": 8}).alpha == 8.0
    assert entry({"unet.lora_alpha": 8, "unet.alpha_pattern": {"2": 2}}).alpha == 2.0
    assert entry({"unet.lora_alpha": 8, "unet.use_rslora": True}).alpha == 16.0  # scale 8 / sqrt(4) = 16 / 4
    for meta, message in [({"unet.alpha_pattern": [1]}, "not a table"), ({"unet.lora_alpha": "x"}, "not a number"),
                          ({"unet.alpha_pattern": {"(a+)+$": float("nan")}}, None)]:
        if message is None:  # a pattern key is matched as a name, never run as a regular expression
            assert entry(meta).alpha is None
            continue
        with pytest.raises(ValueError, match=message):
            entry(meta)
    save_file({"unet.2.lora_A.weight": torch.zeros(0, 6), "unet.2.lora_B.weight": torch.zeros(5, 0)}, tmp_path / "z.safetensors")
    with pytest.raises(ValueError, match="rank-r update"):
        lora_format.read(tmp_path / "z.safetensors")


def test_the_infotext_hash_is_a1111s_addnet_hash(tmp_path):
    import hashlib

    from condiff.fs import short_hash

    save_file({"unet.2.lora_A.weight": torch.ones(2, 6)}, tmp_path / "a.safetensors", metadata={"x": "1"})
    raw = (tmp_path / "a.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert short_hash(tmp_path / "a.safetensors", addnet=True) == hashlib.sha256(raw[8 + n:]).hexdigest()[:12]
    assert short_hash(tmp_path / "a.safetensors") == hashlib.sha256(raw).hexdigest()[:12]
