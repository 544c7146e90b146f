"""The layout prior: training targets from world boxes, the decoding grammar, seeded sampling, the layout judge
(checked on the world's own layouts), and text -> boxes -> image composed with a grounded latent model."""
import json

import pytest
import torch

from condiff import components
from condiff.cli import main
from condiff.png import read_parameters
from condiff.data.world import WorldStream
from condiff.eval.layouts import judge_layout
from condiff.nets.layout_prior import LayoutPrior, LayoutPriorConfig, decode_layout, sample_layouts, target_sequence
from condiff.nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder
from condiff.pipelines.base import load_pipeline
from condiff.train.tasks.layout_prior import targets


def test_the_layout_judge_passes_every_rendered_world_layout():
    stream = WorldStream(16, exclude_held_out=False)
    raw = stream.raw(seed=1, step=0, size=200)
    for caption, boxes in zip(raw[1], stream.boxes(raw)):
        v = judge_layout(caption, boxes)
        assert v["count"] and v["phrases"] and v["geometry"] and v["relation"] in (None, True), (caption, boxes, v)
    assert judge_layout("a red circle", [])["count"] is False


def test_targets_point_at_the_phrases_and_decode_back_to_the_world_boxes():
    enc = PretrainedTextEncoder(PretrainedTextConfig())  # the real WordPiece offsets
    cfg = LayoutPriorConfig(bins=64)
    stream = WorldStream(16, exclude_held_out=False)
    raw = stream.raw(seed=2, step=0, size=40)
    seqs = targets(raw[1], stream.boxes(raw), enc.tokenizer, cfg)
    for seq, caption, boxes in zip(seqs.tolist(), raw[1], stream.boxes(raw)):
        layout = decode_layout(cfg, [t for t in seq if t != -100], caption, enc.tokenizer.tok.encode(caption).offsets)
        assert judge_layout(caption, layout)["phrases"], (caption, layout)
        for got in layout:  # each decoded box is one of the scene's boxes, to the quantisation step
            assert min(max(abs(a - b) for a, b in zip(got["box"], w["box"])) for w in boxes) <= 1 / 64
    assert target_sequence(cfg, [], [])[:2] == [cfg.eos, -100]


@pytest.fixture(scope="module")
def tiny_prior(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prior")
    cfg = {"model": "layout_prior", "text": {"source": str(tiny_bert), "max_length": 16, "width": 32},
           "prior": {"width": 32, "layers": 1, "heads": 2, "max_objects": 4},
           "optim": {"steps": 2, "batch_size": 8, "warmup_steps": 1}, "checkpoint_every": 1}
    (tmp / "p.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp / "p.json"), "--out", str(tmp / "run"), "--workers", "0"]) == 0
    return tmp / "run" / "model"


def test_sampled_layouts_follow_the_grammar_and_their_seed(tiny_prior, tiny_bert):
    prior = components.load("layout_prior", tiny_prior)
    enc = PretrainedTextEncoder(PretrainedTextConfig(source=str(tiny_bert), max_length=16, width=32))
    captions = ["a red circle to the left of a blue square", "a teal box"]
    both = sample_layouts(prior, enc, captions, [3, 4])
    assert sample_layouts(prior, enc, captions[1:], [4]) == both[1:]  # seed, not batch position
    for caption, layout in zip(captions, both):
        assert 1 <= len(layout) <= 4
        for b in layout:
            assert b["phrase"] and b["phrase"] in caption and 0 <= b["box"][0] < b["box"][2] <= 1


def test_text_to_boxes_to_image(tiny_prior, tiny_bert, tmp_path):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_latent import TINY_AE, _latent_config, _write

    assert main(["train", "--config", str(_write(tmp_path / "ae.json", TINY_AE)), "--out", str(tmp_path / "ae")]) == 0
    cfg = _latent_config(tmp_path, tmp_path / "ae" / "model", tiny_bert,
                         grounding={"max_boxes": 4, "token_dim": 16})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "g")]) == 0
    assert main(["compose", "--text2image", str(tmp_path / "g" / "model"), "--layout-prior", str(tiny_prior),
                 "--out", str(tmp_path / "l2i")]) == 0
    pipe = load_pipeline(tmp_path / "l2i")
    assert pipe.spec.kind == "layout2image" and [c.name for c in pipe.spec.components][-1] == "layout_prior"
    out = tmp_path / "o.png"
    assert main(["generate", "a red circle to the left of a blue square", "--model", str(tmp_path / "l2i"),
                 "--steps", "2", "--seed", "5", "--out", str(out)]) == 0 and out.is_file()
    recorded = json.loads(read_parameters(out)["Layout"])  # the predicted layout, in the PNG's infotext
    caption = "a red circle to the left of a blue square"
    assert recorded == [{"phrase": b["phrase"], "box": [round(c, 4) for c in b["box"]]} for b in pipe.layouts([caption], [5])[0]]
    from condiff.nets.unet import UNet, UNetConfig
    from condiff.pipelines.layout2image import Layout2ImagePipeline

    plain = UNet(UNetConfig(**{**vars(pipe.unet.cfg), "grounding_dim": 0}))
    with pytest.raises(ValueError, match="needs a frozen pretrained text encoder and a UNet with grounding"):
        Layout2ImagePipeline(pipe.text_encoder, plain, pipe.cfg, pipe.layout_prior)


def test_layout_command_prints_and_draws_the_predicted_boxes(tiny_prior, tiny_bert, tmp_path, capsys):
    out = tmp_path / "boxes.png"
    assert main(["layout", "a red circle to the left of a blue square", "a teal box", "--model", str(tiny_prior),
                 "--text-source", str(tiny_bert), "--num-images", "2", "--seed", "3", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(r["prompt"][:5], r["seed"]) for r in printed] == [("a red", 3), ("a red", 4), ("a tea", 5), ("a tea", 6)]
    prior = components.load("layout_prior", tiny_prior)
    enc = PretrainedTextEncoder(PretrainedTextConfig(source=str(tiny_bert), max_length=16, width=32))
    assert printed[2]["layout"] == sample_layouts(prior, enc, ["a teal box"], [5], 0.4)[0]
    from PIL import Image
    assert Image.open(out).size == (256, 256)  # two layouts a row, 128 px each
    assert main(["layout", "a red circle", "--model", str(tiny_prior), "--text-source", str(tiny_bert),
                 "--temperature", "nan"]) == 2
    assert "--temperature" in capsys.readouterr().err


def test_a_pointer_prior_points_at_token_states_wherever_they_are():
    """Pointer spans: permuting the caption's token states permutes the span logits alike and leaves every other
    logit as it was (the decoder reads its memory without positions); a pointer-less prior has no such tie."""
    for pointer in (True, False):
        cfg = LayoutPriorConfig(context_dim=16, width=32, layers=1, heads=2, max_text=8, pointer=pointer)
        torch.manual_seed(0)
        prior = LayoutPrior(cfg).eval()
        ctx, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
        mask[1, 4:] = False  # the second caption is 4 tokens long
        tokens = torch.tensor([[cfg.bos, cfg.bins + 1, cfg.bins + 2, 7]] * 2)
        perm = torch.tensor([0, 3, 2, 1, 4, 5])
        a, b = prior.logits(tokens, ctx, mask), prior.logits(tokens, ctx[:, perm], mask[:, perm])
        spans = slice(cfg.bins, cfg.bins + 6)
        assert torch.allclose(a[..., :cfg.bins], b[..., :cfg.bins], atol=1e-5)  # coordinates: content, not places
        assert torch.allclose(a[..., spans][..., perm], b[..., spans], atol=1e-5) == pointer
        if pointer:  # padding and places past the caption are never pointed at
            assert (a[1, :, cfg.bins + 4:cfg.bins + cfg.max_text] <= -1e4 + 1).all()


def test_the_shipped_pointer_prior_finds_the_objects_in_sentence_forms_it_never_saw():
    """layout64_language's prior points at the objects' own words in held-out forms (docs/language.md), where the
    default's index classes shift its spans onto other words ('see a cyan')."""
    pipe = load_pipeline("condiff/weights/layout64_language")
    assert pipe.layout_prior.cfg.pointer
    for caption, objects in (("you can see a cyan square above a red circle", ["a cyan square", "a red circle"]),
                             ("a purple circle along with a blue square", ["a purple circle", "a blue square"]),
                             ("an image showing a large blue square", ["a large blue square"])):
        layouts = pipe.layouts([caption] * 4, [0, 1, 2, 3])
        assert all([b["phrase"] for b in layout] == objects for layout in layouts), (caption, layouts)
    default = load_pipeline("condiff/weights/layout64")
    shifted = default.layouts(["you can see a cyan square above a red circle"], [0])[0]
    assert [b["phrase"] for b in shifted] != ["a cyan square", "a red circle"]
