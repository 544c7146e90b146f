"""condiff CLIP and the noise-aware classifier: training (exact resume), loading, retrieval, guides in the pipeline,
and CLIP-optimised x_T with gradient checkpointing."""
import json

from condiff.catalogue import BASE32

import pytest
import torch
from safetensors.torch import load_file

from condiff.cli import main
from condiff.config import load_json
from condiff.diffusion.noise_optimization import (Checkpointed, ddim_chain, optimize_initial_noise, project_to_sphere,
                                                  saved_activation_bytes)
from condiff.diffusion.sampling import Sampler, SamplingOptions
from condiff.eval.retrieval import retrieval_accuracy, scenes
from condiff.nets.classifier import PAIRS, batch_labels, load_classifier
from condiff.nets.clip import load_clip
from condiff.pipelines.guidance import GuidanceMethod, GuidanceOptions, make_guide
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.train.tasks.judges import AuxTrainConfig
from condiff.train.trainer import train
from condiff.world.grammar import Category

IMAGE = {"patch_size": 2, "model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
         "attention_resolutions": [4], "head_channels": 8}
TINY_AUX = {
    "clip": {"model": "clip", "clip": {"image": IMAGE, "text": {"width": 32, "layers": 1, "heads": 2}, "embed_dim": 16}},
    "noisy_clip": {"model": "clip", "clip": {"image": {**IMAGE, "noise_aware": True},
                                             "text": {"width": 32, "layers": 1, "heads": 2}, "embed_dim": 16}},
    "classifier": {"model": "classifier", "classifier": {"image": {**IMAGE, "noise_aware": True}}},
}
COMMON = {"data": {"resolution": 16}, "schedule": {"num_timesteps": 100},
          "optim": {"steps": 3, "batch_size": 6, "warmup_steps": 1}, "checkpoint_every": 1}


def _config(tmp_path, kind, **over):
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps({**TINY_AUX[kind], **COMMON, **over}))
    return path


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    """Tiny CLIP, noised CLIP and classifier trained 3 steps each through the CLI; {kind: model folder}."""
    tmp = tmp_path_factory.mktemp("judges")
    out = {}
    for kind in TINY_AUX:
        assert main(["train", "--config", str(_config(tmp, kind)), "--out", str(tmp / kind)]) == 0
        out[kind] = tmp / kind / "model"
    return out


def test_judges_train_save_and_load(judges):
    clip, noisy, clf = load_clip(judges["clip"]), load_clip(judges["noisy_clip"]), load_classifier(judges["classifier"])
    assert not clip.noise_aware and noisy.noise_aware
    state = load_file(str(judges["clip"] / "model.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in clip.state_dict().items())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert clip.encode_image(x).norm(dim=1).allclose(torch.ones(2))
    with pytest.raises(ValueError, match="needs the timestep"):
        noisy.encode_image(x)
    assert clf(x, torch.tensor([3, 50])).shape == (2, len(PAIRS) + 4)


@pytest.mark.parametrize("kind", ["noisy_clip", "classifier"])
def test_judge_resume_is_exact(tmp_path, kind):
    cfg = load_json(AuxTrainConfig, _config(tmp_path, kind))
    straight = train(cfg, tmp_path / "a").ema.model
    cfg2 = load_json(AuxTrainConfig, _config(tmp_path, kind))
    cfg2.optim.steps = 2
    train(cfg2, tmp_path / "b")
    resumed = train(load_json(AuxTrainConfig, _config(tmp_path, kind)), tmp_path / "b", resume=True).ema.model
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_classifier_labels_from_captions():
    present, count = batch_labels(["three blue squares", "a red circle to the left of a small blue square"])
    assert present[0].sum() == 1 and present[0, PAIRS.index("blue square")] == 1 and count[0] == 2
    assert present[1, PAIRS.index("red circle")] == 1 and present[1, PAIRS.index("blue square")] == 1
    assert present[1].sum() == 2 and count[1] == 1


def test_retrieval_accuracy_counts_correctly(judges):
    clip = load_clip(judges["clip"])
    images, captions = scenes(Category.POSITION, 12, 16)
    r = retrieval_accuracy(clip, images, captions)
    assert 0 <= r["top1"] <= 1 and 0 <= r["vs_distractors"] <= 1 and r["pool"] == len(set(captions))


def test_every_guide_runs_in_the_pipeline_and_guidance_changes_the_image(tiny_model, judges):
    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    prompts, seeds = ["a red circle to the left of a blue square", "three green triangles"], [0, 1]
    opts = SamplingOptions(steps=4, guidance_scale=1.0)
    plain = pipe(prompts, seeds, opts)
    judge_of = {GuidanceMethod.CLASSIFIER: "classifier", GuidanceMethod.CLIP_X0: "clip"}
    for method in GuidanceMethod:
        judge = load_clip(judges[judge_of.get(method, "noisy_clip")]) if method is not GuidanceMethod.CLASSIFIER \
            else load_classifier(judges["classifier"])
        guide = make_guide(GuidanceOptions(method, 50.0), judge)
        guided = pipe(prompts, seeds, opts, guide=guide)
        assert guided.shape == plain.shape and not torch.allclose(guided, plain), method
        alone = pipe(prompts[:1], seeds[:1], opts, guide=guide)  # batch-independent, up to float summation order
        torch.testing.assert_close(alone, guided[:1], atol=1 / 127.5, rtol=0)  # within one uint8 level
    mean_form = make_guide(GuidanceOptions(GuidanceMethod.CLASSIFIER, 50.0, "mean"), load_classifier(judges["classifier"]))
    ddpm = SamplingOptions(steps=4, guidance_scale=1.0, sampler=Sampler.DDPM)
    assert not torch.allclose(pipe(prompts, seeds, ddpm, guide=mean_form), pipe(prompts, seeds, ddpm))
    with pytest.raises(ValueError, match="needs the ddpm sampler"):
        pipe(prompts, seeds, opts, guide=mean_form)


def test_clip_guidance_needs_a_noise_aware_clip(judges):
    with pytest.raises(ValueError, match="noise-aware CLIP"):
        make_guide(GuidanceOptions(GuidanceMethod.CLIP, 1.0, judge=str(judges["clip"])))


def test_generate_cli_with_a_guide_writes_its_parameters(tiny_model, judges, tmp_path, capsys):
    from condiff.png import read_parameters

    out = tmp_path / "g.png"
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "2", "--guide", "classifier",
                 "--guide-model", str(judges["classifier"]), "--guide-scale", "2", "--guidance-rescale", "0.5",
                 "--out", str(out)]) == 0
    params = read_parameters(out)
    assert params["Guidance"] == "classifier" and params["Guidance scale"] == "2.0" and params["Guidance rescale"] == "0.5"
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--guide", "clip",
                 "--guide-model", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "missing file" in capsys.readouterr().err


def test_checkpointing_gives_the_same_gradient_with_less_saved_memory(tiny_model):
    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    pipe.unet.requires_grad_(False)
    model = pipe.guided_model(["a red circle"], SamplingOptions(guidance_scale=1.0))
    ts = pipe.schedule.timesteps(4)
    z0 = torch.randn(1, 3, 16, 16)

    def grad(m):
        z = z0.clone().requires_grad_(True)
        ddim_chain(m, z, pipe.schedule, ts).square().sum().backward()
        return z.grad

    torch.testing.assert_close(grad(Checkpointed(model)), grad(model))
    full = saved_activation_bytes(lambda: ddim_chain(model, z0.clone().requires_grad_(True), pipe.schedule, ts))
    ckpt = saved_activation_bytes(lambda: ddim_chain(Checkpointed(model), z0.clone().requires_grad_(True), pipe.schedule, ts))
    assert ckpt < full / 3


def test_noise_optimisation_never_lowers_the_objective(tiny_model):
    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    pipe.unet.requires_grad_(False)
    model = pipe.guided_model(["a red circle"] * 2, SamplingOptions(guidance_scale=1.0))
    ts = pipe.schedule.timesteps(3)
    objective = lambda x0: -(x0 - torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)).square().flatten(1).mean(1)
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    best, history = optimize_initial_noise(model, pipe.schedule, z, objective, ts, iters=4, lr=0.2)
    assert len(history) == 5
    with torch.no_grad():
        final = objective(ddim_chain(model, best, pipe.schedule, ts))
    assert (final >= torch.tensor(history[0]) - 1e-6).all() and (final > torch.tensor(history[0])).any()
    torch.testing.assert_close(best.flatten(1).norm(dim=1), torch.full((2,), (3 * 16 * 16) ** 0.5))
    torch.testing.assert_close(project_to_sphere(best), best)


def test_clip_trains_on_a_captioned_image_folder(tmp_path):
    from test_train import _make_folder

    folder = _make_folder(tmp_path / "data")
    out = tmp_path / "clip"
    assert main(["train", "--config", str(_config(tmp_path, "clip")), "--out", str(out), "--data", str(folder)]) == 0
    clip = load_clip(out / "model")
    assert "teal" in clip.text_encoder.tokenizer.stoi  # the folder's own captions made the vocabulary
    assert clip.encode_text(["a teal picture"]).shape == (1, 16)


def test_cli_guidance_choices_match_the_enums():
    from condiff.cli import GUIDANCE_FORM_NAMES, GUIDANCE_METHOD_NAMES, GUIDE_NAMES
    from condiff.eval.sweep import DEFAULT_SCALES
    from condiff.pipelines.guidance import GuidanceForm

    assert GUIDANCE_METHOD_NAMES == [m.value for m in GuidanceMethod]
    assert GUIDANCE_FORM_NAMES == [f.value for f in GuidanceForm]
    assert GUIDE_NAMES == list(DEFAULT_SCALES)


def test_eval_sweep_end_to_end(tmp_path):
    """condiff eval sweep on a tiny workload: a point per (method, scale), the real-vs-real floor row, the plot."""
    out = tmp_path / "sweep"
    assert main(["eval", "sweep", "--methods", "cfg_rescale,clip_xT", "--prompts-per-category", "1", "--n-per-prompt", "2",
                 "--steps", "2", "--model", str(BASE32), "--out-dir", str(out)]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert [p["scale"] for p in report["methods"]["cfg_rescale"]] == [5.0, 8.0]
    assert [p["scale"] for p in report["methods"]["clip_xT"]] == [3.0, 6.0]
    assert report["images_per_point"] == 10 and report["reference_images"] == 20
    floor = report["rendered"]
    assert floor["accuracy"]["overall"] == 1.0  # the oracle on ground-truth renders
    for p in report["methods"]["cfg_rescale"] + [floor]:
        assert 0.0 <= p["precision"] <= 1.0 and 0.0 <= p["recall"] <= 1.0 and p["fd"] >= 0.0
    assert (out / "sweep.png").stat().st_size > 10_000


def test_clip_optimised_xT_in_the_pipeline_is_per_image(tiny_model, judges, tmp_path):
    """--clip-xt-iters: x_T changes, and image i still depends only on (prompt i, seed i), not on its batch."""
    from condiff.pipelines.guidance import NoiseOptimization, make_initializer
    from condiff.png import read_parameters

    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    optimise, calls = make_initializer(NoiseOptimization(iters=2, chain_steps=2), load_clip(judges["clip"])), []

    def init(model, schedule, z, prompts):
        calls.append(len(prompts))
        return optimise(model, schedule, z, prompts)

    opts = SamplingOptions(steps=2, guidance_scale=2.0)
    both = pipe(["a red circle", "two blue squares"], [5, 6], opts, init=init)
    alone = pipe(["two blue squares"], [6], opts, init=init)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
    assert calls == [2, 1]  # (the untrained tiny model saturates, so whether x_T moved is tested above, not here)
    out = tmp_path / "xt.png"
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "2", "--clip-xt-iters", "1",
                 "--clip-xt-chain", "2", "--clip-xt-model", str(judges["clip"]), "--out", str(out)]) == 0
    assert read_parameters(out)["CLIP x_T iterations"] == "1"
    with pytest.raises(ValueError, match="iters >= 1"):
        make_initializer(NoiseOptimization(iters=0), load_clip(judges["clip"]))


def test_clip_on_a_frozen_pretrained_text_encoder(tiny_bert, tmp_path):
    """The text tower's base is the frozen BERT: trained by `condiff train`, its weights stay out of the CLIP's file
    (and the optimiser), the cached states change nothing, and training resumes exactly."""
    from condiff.nets.pretrained_text import PretrainedTextEncoder

    over = {"clip": {**TINY_AUX["clip"]["clip"], "pretrained_text": {"source": str(tiny_bert), "max_length": 12, "width": 32}}}
    cfg = load_json(AuxTrainConfig, _config(tmp_path, "clip", **over))
    run = train(cfg, tmp_path / "a")
    folder = tmp_path / "a" / "model"
    assert not any("bert" in k for k in load_file(str(folder / "model.safetensors")))
    clip = load_clip(folder)
    texts = ["a red circle", "a blue square", "a red circle"]
    got = clip.encode_text(texts)  # through the cache on the second call
    torch.testing.assert_close(clip.encode_text(texts), got)
    bert = PretrainedTextEncoder(clip.cfg.pretrained_text)
    ids, mask = bert.tokenizer(texts)
    tower = clip.text_encoder
    want = clip.text_embedding(tower(bert(ids, mask)["context"], mask)["pooled"])  # uncached, from a fresh encoder
    torch.testing.assert_close(got, want)
    assert got.norm(dim=1).allclose(torch.ones(3)) and torch.equal(got[0], got[2])
    assert not any("bert" in n for n, _ in run.model.named_parameters())

    cfg2 = load_json(AuxTrainConfig, _config(tmp_path, "clip", **over))
    cfg2.optim.steps = 2
    train(cfg2, tmp_path / "b")
    resumed = train(load_json(AuxTrainConfig, _config(tmp_path, "clip", **over)), tmp_path / "b", resume=True).ema.model
    for (k, a), b in zip(run.ema.model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
