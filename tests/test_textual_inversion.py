"""Textual inversion (issue 36): a new token's vectors in the frozen encoder's input space, files in diffusers' and
A1111's layouts, diffusers' own image on Stable Diffusion, and `condiff train` learning only the vectors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from condiff.cli import main
from condiff.formats import embeddings
from condiff.nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder


@pytest.fixture(scope="module")
def tiny_pretrained_model(tiny_bert, tmp_path_factory):
    """A tiny pixel model reading the tiny BERT, trained two steps (the base a token is added to)."""
    folder = tmp_path_factory.mktemp("tp")
    cfg = {"seed": 0, "data": {"resolution": 16}, "pretrained_text": {"source": str(tiny_bert), "max_length": 16, "width": 32},
           "unet": {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
                    "head_channels": 16}, "pipeline": {"schedule": {"num_timesteps": 100}},
           "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1}, "log_every": 1, "sample_every": 0,
           "checkpoint_every": 1}
    (folder / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(folder / "c.json"), "--out", str(folder / "run")]) == 0
    return folder / "run" / "model"


def test_a_token_at_a_words_embedding_reads_as_that_word_and_several_vectors_expand(tiny_bert):
    enc = PretrainedTextEncoder(PretrainedTextConfig(str(tiny_bert), 16, 32))
    word = enc.encode(["a red circle"])["context"]
    enc.add_concepts({"<sks>": enc.embedding_of("circle")[None]})
    assert torch.equal(enc.encode(["a red <sks>"])["context"], word)
    g = torch.Generator().manual_seed(0)
    enc.add_concepts({"<two>": torch.randn(2, 32, generator=g)})
    ids, mask = enc.tokenizer(["a <two> square"])
    assert mask.sum() == 6 and ids[0, 2:4].tolist() == [19, 20]  # [CLS] a <two> <two>_1 square [SEP]; <sks> is 18
    with pytest.raises(ValueError, match="already"):
        enc.add_concepts({"<sks>": torch.zeros(1, 32)})
    with pytest.raises(ValueError, match="wide"):
        enc.add_concepts({"<w>": torch.zeros(1, 7)})


def test_files_in_diffusers_and_a1111_layouts_and_bad_ones(tmp_path):
    v = torch.randn(2, 32)
    embeddings.write(tmp_path / "learned_embeds.safetensors", {"<sks>": v})
    assert torch.equal(embeddings.read(tmp_path)["<sks>"], v)  # a folder reads its learned_embeds.safetensors
    save_file({"emb_params": v}, tmp_path / "mystyle.safetensors")
    assert list(embeddings.read(tmp_path / "mystyle.safetensors")) == ["mystyle"]
    save_file({"<x>": torch.randn(32)}, tmp_path / "one.safetensors")
    assert embeddings.read(tmp_path / "one.safetensors")["<x>"].shape == (1, 32)
    (tmp_path / "e.pt").write_bytes(b"\x80\x04")
    save_file({"a b": v}, tmp_path / "space.safetensors")
    save_file({"<n>": torch.full((1, 32), float("nan"))}, tmp_path / "nan.safetensors")
    for name, message in [("e.pt", "pickle"), ("space.safetensors", "spaces"), ("nan.safetensors", "finite"),
                          ("no.safetensors", "no such file")]:
        with pytest.raises(ValueError, match=message):
            embeddings.read(tmp_path / name)


diffusers = pytest.importorskip("diffusers")
from diffusers import StableDiffusionPipeline  # noqa: E402

from test_stable_diffusion import tiny_sd  # noqa: E402


def test_an_embedding_draws_diffusers_load_textual_inversion_image_on_stable_diffusion(tmp_path):
    folder = tiny_sd(tmp_path / "sd1")
    g = torch.Generator().manual_seed(3)
    file = tmp_path / "learned_embeds.safetensors"
    save_file({"<cat-toy>": torch.randn(2, 32, generator=g)}, file)
    prompt = "a photo of the <cat-toy>"
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(file))
    theirs = pipe(prompt, num_inference_steps=10, guidance_scale=7.5, height=64, width=64,
                  generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    out = tmp_path / "c.png"
    assert main(["generate", prompt, "--model", str(folder), "--sampler", "ddim", "--steps", "10", "--size", "64",
                 "--embedding", str(file), "--out", str(out)]) == 0
    ours = np.asarray(Image.open(out)).astype(int)
    assert np.abs(ours - (theirs * 255).round().astype(int)).max() <= 3
    assert "TI hashes: " in Image.open(out).info["parameters"]
    from condiff.pipelines.text2image import Text2ImagePipeline

    mine = Text2ImagePipeline.from_pretrained(folder)
    embeddings.apply(mine.parts, [embeddings.EmbeddingSpec(str(file))])
    with torch.no_grad():
        ctx = mine.text_encoder.encode([prompt])["context"]
        plain = Text2ImagePipeline.from_pretrained(folder).text_encoder.encode([prompt])["context"]
        peer = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
    assert torch.allclose(ctx, peer, atol=1e-5)  # the prompt's states are diffusers' with the token loaded
    assert (ctx - plain).abs().max() > 0.1  # and the token changed them


def test_condiff_train_learns_only_the_tokens_vectors(tiny_pretrained_model, tmp_path, capsys):
    cfg = json.loads((tiny_pretrained_model.parent / "config.json").read_text())
    cfg |= {"init": {"from_model": str(tiny_pretrained_model)},
            "textual_inversion": {"token": "<sks>", "init_word": "circle", "vectors": 2}}
    cfg["optim"] |= {"steps": 3, "lr": 0.05}
    (tmp_path / "ti.json").write_text(json.dumps(cfg))
    from condiff.world.render import PlacedObject, render, to_uint8

    data = tmp_path / "subject"  # the new subject: a shape drawn in four places, captioned with the token
    data.mkdir()
    rows = []
    for k, (cx, cy) in enumerate([(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7)]):
        Image.fromarray(to_uint8(render([[PlacedObject("triangle", "red", cx, cy, 0.4)]], 16))[0].numpy()).save(
            data / f"{k}.png")
        rows.append(json.dumps({"file_name": f"{k}.png", "text": "a red <sks>"}))
    (data / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    assert main(["train", "--config", str(tmp_path / "ti.json"), "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    saved = load_file(tmp_path / "run" / "model" / embeddings.WEIGHT_NAME)
    assert list(saved) == ["<sks>"] and saved["<sks>"].shape == (2, 32)
    start = PretrainedTextEncoder(PretrainedTextConfig(cfg["pretrained_text"]["source"], 16, 32)).embedding_of("circle")
    assert not torch.allclose(saved["<sks>"][0], start)  # it moved
    base = load_file(next((tiny_pretrained_model / "unet").glob("*.safetensors")))
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    ckpt = load_file(tmp_path / "run" / "checkpoints" / latest / "state.safetensors")
    assert all(torch.equal(ckpt[f"model.unet.{k}"].to(v.dtype), v) for k, v in base.items())  # the UNet did not train
    out = tmp_path / "o.png"
    assert main(["generate", "a red <sks>", "--model", str(tiny_pretrained_model), "--steps", "3",
                 "--embedding", str(tmp_path / "run" / "model"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", "a red <sks>", "--model", str(tiny_pretrained_model), "--steps", "3", "--embedding",
                 str(tmp_path / "run" / "model"), "--embedding", str(tmp_path / "run" / "model"), "--out", str(out)]) == 2
    assert "already" in capsys.readouterr().err


def _subject_folder(folder, caption: str):
    from condiff.world.render import PlacedObject, render, to_uint8

    folder.mkdir()
    rows = []
    for k, (cx, cy) in enumerate([(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7)]):
        Image.fromarray(to_uint8(render([[PlacedObject("square", "cyan", cx, cy, 0.4)]], 16))[0].numpy()).save(
            folder / f"{k}.png")
        rows.append(json.dumps({"file_name": f"{k}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_dreambooth_draws_its_class_images_once_and_the_prior_term_changes_what_trains(tiny_pretrained_model, tmp_path):
    """DreamBooth with a LoRA: the class images are the starting model's own drawings of the class prompt (seeds 0..),
    made once; prior_weight 0 and 1 train different adapters from the same subject and seed."""
    data = _subject_folder(tmp_path / "subject", "a teal box")
    cfg = json.loads((tiny_pretrained_model.parent / "config.json").read_text())
    cfg |= {"init": {"from_model": str(tiny_pretrained_model)}, "lora": {"rank": 2, "targets": ["qkv", "proj"]},
            "prior_preservation": {"class_prompt": "a box", "class_images": 3, "class_folder": str(tmp_path / "class")}}
    cfg["optim"] |= {"steps": 2, "lr": 0.05}
    adapters = []
    for weight in (1.0, 0.0):
        cfg["prior_preservation"]["prior_weight"] = weight
        (tmp_path / "db.json").write_text(json.dumps(cfg))
        run = tmp_path / f"run{weight}"
        assert main(["train", "--config", str(tmp_path / "db.json"), "--data", str(data), "--out", str(run)]) == 0
        adapters.append(load_file(run / "model" / "pytorch_lora_weights.safetensors"))
    rows = [json.loads(r) for r in (tmp_path / "class" / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a box"] * 3 and len(list((tmp_path / "class").glob("*.png"))) == 3
    from condiff.pipelines.text2image import Text2ImagePipeline
    from condiff.world.render import to_uint8

    pipe = Text2ImagePipeline.from_pretrained(tiny_pretrained_model)
    first = to_uint8(pipe(["a box"], [0], pipe.defaults))[0].numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "class" / "00000.png")), first)  # the model's own, seed 0
    assert any(not torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
