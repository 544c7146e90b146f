"""CLIP guidance judged by a transformers CLIPModel folder (issue 32): a tiny random CLIP that transformers itself
builds and saves, read by condiff.formats as a judge with condiff CLIP's contract, checked against transformers' own
forward pass and CLIPImageProcessorPil, and used to guide a tiny diffusers Stable Diffusion through the CLI."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel  # noqa: E402

from condiff.cli import main  # noqa: E402
from condiff.config import ConfigError  # noqa: E402
from condiff.formats import load_clip  # noqa: E402
from condiff.formats.single_file import clip_tokenizer  # noqa: E402
from condiff.formats.transformers_clip import TransformersCLIP  # noqa: E402
from condiff.pipelines.guidance import clip_log_prob  # noqa: E402
from test_stable_diffusion import tiny_sd  # noqa: E402

SIDE = 32  # the tiny vision tower's image side
PROMPTS = ["a red circle", "a photograph of an astronaut riding a horse"]


def tiny_clip(folder: Path) -> Path:
    """A transformers CLIPModel with SD1's real 49,408-token tokenizer, saved as a user's CLIP folder is."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=SIDE,
                  patch_size=4)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    clip_tokenizer(sd2=False).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def peer_logits(folder: Path, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
    """transformers' own logits_per_image, its processor preparing the pictures (uint8 (B, H, W, 3))."""
    model = CLIPModel.from_pretrained(folder).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(folder)(list(images), return_tensors="pt").pixel_values
    tokens = clip_tokenizer(sd2=False)(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels).logits_per_image


def test_a_transformers_clip_folder_judges_as_transformers_does(clip_dir):
    """log p = exp(tau) cos(f(x), g(y)), the guidance objective, equals CLIPModel's logits_per_image for pictures at
    the tower's side, prepared by transformers' own image processor (rescale and CLIP's mean/std)."""
    judge = load_clip(clip_dir)
    assert isinstance(judge, TransformersCLIP) and not judge.noise_aware and judge.resolution == SIDE
    images = np.random.default_rng(0).integers(0, 256, (2, SIDE, SIDE, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ours = clip_log_prob(judge, PROMPTS)(x, None)
    theirs = peer_logits(clip_dir, images, PROMPTS)
    assert torch.allclose(ours, theirs.diagonal(), atol=1e-4), (ours, theirs)


def test_a_larger_picture_is_resized_to_the_towers_side(clip_dir):
    judge = load_clip(clip_dir)
    x = torch.rand(1, 3, 4 * SIDE, 4 * SIDE) * 2 - 1
    small = torch.nn.functional.interpolate(x, size=SIDE, mode="bicubic", antialias=True)
    with torch.no_grad():
        assert torch.allclose(judge.encode_image(x), judge.encode_image(small), atol=1e-5)


def test_clip_guidance_on_stable_diffusion_raises_the_judges_logit(clip_dir, tmp_path):
    """`generate --guide clip_x0 --guide-model CLIP` on a diffusers SD folder: x0_hat is decoded through the VAE and
    judged by the transformers CLIP; the saved pictures score higher by transformers' own model than unguided ones
    from the same seeds."""
    sd = tiny_sd(tmp_path / "sd")
    scores = {}
    for scale in (0, 1000):
        out = tmp_path / f"g{scale}.png"
        guide = ["--guide", "clip_x0", "--guide-model", str(clip_dir), "--guide-scale", str(scale)] if scale else []
        assert main(["generate", PROMPTS[1], "--model", str(sd), "--seed", "0", "-n", "2", "--steps", "10",
                     "--size", "64", "--out", str(out), *guide]) == 0
        images = np.stack([np.asarray(Image.open(tmp_path / f"g{scale}-{i:03d}.png")) for i in range(2)])
        scores[scale] = peer_logits(clip_dir, images, PROMPTS[1:]).squeeze(1)
    assert (scores[1000] > scores[0]).all(), scores


def test_a_clip_folder_without_weights_is_refused_in_one_line(clip_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((clip_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match="no model.safetensors"):
        load_clip(broken)
    (broken / "model.safetensors").write_bytes((clip_dir / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        load_clip(broken)
