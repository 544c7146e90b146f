"""Box grounding (GLIGEN): Fourier box embedding, null tokens, the zero gate, training on world boxes, and sampling
with boxes through the pipeline and the CLI."""
import json

import pytest
import torch

from condiff.cli import main
from condiff.diffusion.sampling import SamplingOptions
from condiff.nets.grounding import (GatedSelfAttention, GroundingTokens, LayoutMap, box_coverage, cell_boxes,
                                    fourier_embedding, grounding_inputs)
from condiff.nets.unet import UNet, UNetConfig
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.png import parse_parameters as read_parameters_text, read_parameters


def test_fourier_embedding_is_sin_and_cos_of_octaves():
    boxes = torch.tensor([[[0.25, 0.5, 0.75, 1.0]]])
    e = fourier_embedding(boxes, freqs=3)
    assert e.shape == (1, 1, 24)
    k, x = 2, 0.5  # the second coordinate's third frequency
    assert e[0, 0, 1 * 6 + k].item() == pytest.approx(torch.sin(torch.tensor(2 ** k * torch.pi * x)).item(), abs=1e-6)
    assert e[0, 0, 1 * 6 + 3 + k].item() == pytest.approx(torch.cos(torch.tensor(2 ** k * torch.pi * x)).item(), abs=1e-6)


def test_cell_boxes_tile_the_unit_square_row_major():
    cells = cell_boxes(2, 4)
    assert cells.shape == (1, 8, 4)
    assert cells[0, 1].tolist() == [0.25, 0.0, 0.5, 0.5] and cells[0, 4].tolist() == [0.0, 0.5, 0.25, 1.0]
    areas = (cells[0, :, 2] - cells[0, :, 0]) * (cells[0, :, 3] - cells[0, :, 1])
    assert areas.sum().item() == pytest.approx(1.0)


def test_masked_slots_are_the_null_token_whatever_they_hold():
    g = GroundingTokens(phrase_dim=8, dim=16)
    torch.nn.init.normal_(g.null_phrase), torch.nn.init.normal_(g.null_box)
    mask = torch.tensor([[True, False]])
    a = g(torch.randn(1, 2, 8), torch.rand(1, 2, 4), mask)
    b = g(torch.randn(1, 2, 8), torch.rand(1, 2, 4), mask)
    assert torch.allclose(a[:, 1], b[:, 1]) and not torch.allclose(a[:, 0], b[:, 0])


def _random_unet(**over):
    torch.manual_seed(0)
    unet = UNet(UNetConfig(resolution=8, in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2),
                           num_res_blocks=1, attention_resolutions=(8, 4), head_channels=8, context_dim=32, **over))
    for name, p in unet.named_parameters():  # non-trivial outputs; the grounding layers keep torch's default init
        if "gated" not in name and not name.startswith("grounding."):
            torch.nn.init.normal_(p, std=0.05)
    return unet


def test_grounding_layers_start_as_the_identity_and_then_read_the_boxes():
    """A zero output projection: adding grounding to a trained UNet leaves its output unchanged (as GLIGEN's gamma = 0),
    and the projection gets a gradient at once (gamma = 0 would leave the block's weights without one)."""
    plain = _random_unet()
    grounded = _random_unet(grounding_dim=32, grounding_token_dim=16)
    missing, unexpected = grounded.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("gated" in k or k.startswith("grounding.") for k in missing)
    gates = [m for m in grounded.modules() if isinstance(m, GatedSelfAttention)]
    assert gates and all(m.gamma.item() == 1 and not m.proj.weight.any() for m in gates)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 500])
    ctx = {"context": torch.randn(2, 5, 32), "context_mask": torch.ones(2, 5, dtype=torch.bool), "pooled": torch.randn(2, 32)}
    g = {"box_phrases": torch.randn(2, 3, 32), "boxes": torch.rand(2, 3, 4), "box_mask": torch.ones(2, 3, dtype=torch.bool)}
    out = grounded(x, t, **ctx, **g)
    assert torch.allclose(plain(x, t, **ctx), out, atol=1e-6)
    out.square().sum().backward()
    assert all(m.proj.weight.grad.abs().sum() > 0 for m in gates)  # the zero projection learns from the first step
    for m in gates:
        torch.nn.init.normal_(m.proj.weight, std=0.3)
    moved = dict(g, boxes=g["boxes"].flip(-1))
    assert not torch.allclose(grounded(x, t, **ctx, **g), grounded(x, t, **ctx, **moved), atol=1e-4)


def test_grounding_inputs_pad_to_the_slots_and_embed_each_phrase_once():
    calls = []

    def encode(phrases):
        calls.append(list(phrases))
        return {"pooled": torch.arange(len(phrases), dtype=torch.float32)[:, None].expand(-1, 3)}
    lists = [[{"phrase": "a red circle", "box": [0, 0, 0.5, 0.5]}], [{"phrase": "a red circle", "box": [0.5, 0.5, 1, 1]},
                                                                     {"phrase": "a blue square", "box": [0, 0.5, 0.5, 1]}]]
    g = grounding_inputs(encode, lists, 4, "cpu")
    assert calls == [["a red circle", "a blue square"]]
    assert g["box_mask"].tolist() == [[True, False, False, False], [True, True, False, False]]
    assert g["box_phrases"][1, 1, 0] == 1 and g["boxes"][1, 0].tolist() == [0.5, 0.5, 1, 1]


@pytest.fixture(scope="module")
def grounded_model(tiny_config_path, tmp_path_factory):
    cfg = json.loads(tiny_config_path.read_text()) | {"grounding": {"max_boxes": 4, "token_dim": 16}}
    tmp = tmp_path_factory.mktemp("grounded")
    (tmp / "g.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp / "g.json"), "--out", str(tmp / "run"), "--workers", "0"]) == 0
    return tmp / "run" / "model"


def test_a_model_trained_on_world_boxes_samples_with_boxes(grounded_model):
    pipe = Text2ImagePipeline.from_pretrained(grounded_model)
    assert pipe.unet.cfg.grounding_dim == pipe.text_encoder.cfg.width and pipe.unet.cfg.grounding_max_boxes == 4
    boxes = [[{"phrase": "a red circle", "box": [0.1, 0.1, 0.4, 0.4]}, {"phrase": "a blue square", "box": [0.6, 0.6, 0.9, 0.9]}]]
    torch.manual_seed(0)  # two training steps leave the zero-initialised output and gates near 0: open them
    for name, p in pipe.unet.named_parameters():  # norms keep their init; the grounding path gets a larger one
        if "norm" not in name and not name.endswith("gamma"):
            torch.nn.init.normal_(p, std=0.05 if "gated" not in name and not name.startswith("grounding.") else 0.3)
    for m in pipe.unet.modules():
        if isinstance(m, GatedSelfAttention):
            m.gamma.data.fill_(0.5)
    prompt, opts = ["a red circle to the left of a blue square"], SamplingOptions(steps=3, threshold="none")
    assert pipe(prompt, [0], opts, boxes=boxes).shape == (1, 3, 16, 16)
    # the last step alone (from x at step 2 of 3) keeps x0_hat near the data's scale, so a box's effect is measurable
    run = lambda prompts, seeds, **kw: pipe.denoise(prompts, seeds, opts, start=2, **kw)
    a = run(prompt, [0], boxes=boxes)
    b = run(prompt, [0], boxes=[[dict(boxes[0][0], box=[0.6, 0.1, 0.9, 0.4]), boxes[0][1]]])
    c = run(prompt, [0], boxes=boxes, boxes_in_uncond=True)
    assert (a - b).abs().max() > 2e-5 and (a - c).abs().max() > 2e-5
    two = run(prompt * 2, [1, 0], boxes=[[], boxes[0]])
    torch.testing.assert_close(two[1:], a, rtol=1e-5, atol=2e-6)  # same seed, same image, whatever the batch holds
    with pytest.raises(ValueError, match="at most 4 boxes"):
        pipe(prompt, [0], boxes=[boxes[0] * 3])


def test_generate_with_boxes_and_bad_boxes(grounded_model, tiny_model, tmp_path, capsys):
    box = '[{"phrase": "a red circle", "box": [0.1, 0.1, 0.4, 0.4]}]'
    out = tmp_path / "g.png"
    assert main(["generate", "a red circle", "--model", str(grounded_model), "--steps", "2", "--boxes", box, "--out", str(out)]) == 0
    assert out.is_file()
    for bad, message in (("[{", "--boxes: not JSON"), ('[{"phrase": "x", "box": [0.5, 0, 0.1, 1]}]', "0 <= x0 < x1 <= 1")):
        assert main(["generate", "a red circle", "--model", str(grounded_model), "--boxes", bad, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "2", "--boxes", box, "--out", str(out)]) == 2
    assert "this model has no grounding layers" in capsys.readouterr().err
    layout = tmp_path / "layout.json"
    layout.write_text(box)
    assert main(["generate", "a red circle", "--model", str(grounded_model), "--steps", "2", "--layout", str(layout),
                 "--out", str(out)]) == 0
    assert json.loads(read_parameters(out)["Layout"]) == json.loads(box)
    for text, message in (('[{"phrase": "a blue square", "box": [0, 0, 0.5, 0.5]}]', "not in the prompt"),
                          ('[{"phrase": "a red circle", "box": [NaN, 0, 0.5, 0.5]}]', "0 <= x0 < x1 <= 1")):
        layout.write_text(text)
        assert main(["generate", "a red circle", "--model", str(grounded_model), "--layout", str(layout),
                     "--out", str(tmp_path / "never.png")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "never.png").exists()
    assert main(["generate", "a red circle", "--layout", str(layout), "--boxes", box, "--out", str(out)]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_grounding_is_added_to_a_trained_model_without_changing_it(tiny_model, tiny_config_path, tmp_path):
    """init.from_model with a "grounding" config: the plain model's weights load, the new gated layers start shut."""
    cfg = json.loads(tiny_config_path.read_text()) | {"grounding": {"max_boxes": 2, "token_dim": 16},
                                                      "init": {"from_model": str(tiny_model)}}
    cfg["optim"] = cfg["optim"] | {"steps": 0}
    (tmp_path / "g.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "g.json"), "--out", str(tmp_path / "run"), "--workers", "0"]) == 0
    plain, grounded = Text2ImagePipeline.from_pretrained(tiny_model), Text2ImagePipeline.from_pretrained(tmp_path / "run" / "model")
    assert grounded.unet.cfg.grounding_max_boxes == 2 and not plain.unet.cfg.grounding_dim
    prompt, opts = ["a red circle"], SamplingOptions(steps=2)
    boxes = [[{"phrase": "a red circle", "box": [0.1, 0.1, 0.4, 0.4]}]]
    torch.testing.assert_close(grounded(prompt, [3], opts, boxes=boxes), plain(prompt, [3], opts), rtol=1e-4, atol=1e-5)


def test_the_service_and_api_take_a_layout_for_a_grounded_model(grounded_model):
    from condiff.ui.service import GenerationService, RequestError, Txt2ImgRequest

    service = GenerationService(grounded_model)
    layout = [{"phrase": "a red circle", "box": [0.1, 0.1, 0.4, 0.4]}]
    im, = service.txt2img(Txt2ImgRequest("a red circle", seed=3, steps=2, layout=layout))
    assert im.layout == layout and json.loads(read_parameters_text(im.parameters)["Layout"]) == layout
    plain, = service.txt2img(Txt2ImgRequest("a red circle", seed=3, steps=2))
    assert plain.layout is None and "Layout" not in read_parameters_text(plain.parameters)
    for bad, message in (([{"phrase": "a blue square", "box": [0, 0, 0.5, 0.5]}], "not in the prompt"),
                         (layout * 5, "at most 4 boxes")):
        with pytest.raises(RequestError, match=message):
            service.txt2img(Txt2ImgRequest("a red circle", steps=2, layout=bad))


def test_box_coverage_is_the_share_of_each_cell_inside_the_box():
    boxes, mask = torch.tensor([[[0.25, 0.0, 0.625, 0.5], [0, 0, 1, 1]]]), torch.tensor([[True, False]])
    cov = box_coverage(boxes, mask, 2, 4)  # cells 0.25 wide, 0.5 high
    assert cov.shape == (1, 2, 2, 4) and not cov[0, 1].any()
    assert cov[0, 0].tolist() == [[0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert cov[0, 0].sum().item() * 0.25 * 0.5 == pytest.approx(0.375 * 0.5)  # the box's area


def test_a_layout_map_added_to_a_grounded_model_leaves_it_unchanged_until_trained(grounded_model, tiny_config_path, tmp_path):
    cfg = json.loads(tiny_config_path.read_text()) | {"grounding": {"max_boxes": 4, "token_dim": 16, "map_channels": 3},
                                                      "init": {"from_model": str(grounded_model)}}
    cfg["optim"] = cfg["optim"] | {"steps": 0}
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "m.json"), "--out", str(tmp_path / "run"), "--workers", "0"]) == 0
    old, new = Text2ImagePipeline.from_pretrained(grounded_model), Text2ImagePipeline.from_pretrained(tmp_path / "run" / "model")
    assert isinstance(new.unet.layout_map, LayoutMap) and new.unet.inputs[0][0].in_channels == old.unet.inputs[0][0].in_channels + 4
    prompt, opts = ["a red circle"], SamplingOptions(steps=2)
    boxes = [[{"phrase": "a red circle", "box": [0.1, 0.1, 0.4, 0.4]}]]
    torch.testing.assert_close(new(prompt, [3], opts, boxes=boxes), old(prompt, [3], opts, boxes=boxes), rtol=1e-4, atol=1e-5)
    torch.nn.init.normal_(new.unet.inputs[0][0].weight, std=0.3)  # once the new channels have weight, boxes move the output
    moved = [[dict(boxes[0][0], box=[0.6, 0.6, 0.9, 0.9])]]
    x = lambda b: new.denoise(prompt, [3], opts, start=1, boxes=b)
    assert (x(boxes) - x(moved)).abs().max() > 1e-4  # float rounding alone: about 1e-7
