"""The Structure redesign: golden sampler outputs, the one denoiser contract for every prediction type, the sampler
hooks (start, replace, keyword conditioning), components and pipelines, and the package's own shape."""
import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from condiff import components
from condiff.diffusion.denoiser import Denoiser, Prediction
from condiff.diffusion.guidance import ClassifierFreeGuidance, Conditioned
from condiff.diffusion.samplers import PerSampleNoise
from condiff.diffusion.sampling import SamplingOptions, noise_to, plan_alpha_bars, sample, start_step
from condiff.diffusion.schedule import NoiseSchedule, ScheduleConfig
from condiff.pipelines.base import Pipeline, load_pipeline, read_spec
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.catalogue import BASE32

GOLDEN = Path(__file__).parent / "golden"
PACKAGE = Path(__file__).parent.parent / "condiff"


def _golden_cases():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def golden():
    return load_file(str(GOLDEN / "samplers.safetensors")), _golden_cases()


@pytest.fixture(scope="module")
def shipped():
    return Text2ImagePipeline.from_pretrained(BASE32)


def test_every_sampler_on_the_shipped_model_is_unchanged_since_before_the_redesign(golden):
    """Recorded by tests/golden/make_golden.py on the code before the redesign (commit bc532d7), in float64 on one
    thread, where the CPU's float kernels no longer matter: any CPU reproduces it to rounding (1e-11 seen), and a
    change of a sampler's maths moves it by orders more."""
    want, mod = golden
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        got = mod.record(Text2ImagePipeline.from_pretrained(BASE32))
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == torch.float64, name
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-8, msg=lambda m: f"{name}: {m}")


# A Gaussian data distribution x0 ~ N(MU, S^2 I) has a closed-form denoiser at every (fractional) t.
MU, S = 0.3, 0.5
SCHED = NoiseSchedule.from_config(ScheduleConfig())


def exact_x0(x, t):
    """E[x0 | x_t] for Gaussian data, at alpha_bar(t) (log-sigma interpolated at fractional t)."""
    ab = SCHED.alpha_bar_at(t).to(x).view(-1, *([1] * (x.ndim - 1)))
    return MU + ab.sqrt() * S ** 2 / (ab * S ** 2 + 1 - ab) * (x - ab.sqrt() * MU), ab


class GaussianNet(torch.nn.Module):
    """The exact network of each prediction type for the Gaussian data."""

    def __init__(self, prediction: Prediction):
        super().__init__()
        self.prediction = prediction

    def forward(self, x, t):
        x0, ab = exact_x0(x, t)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return {Prediction.EPSILON: eps, Prediction.X0: x0, Prediction.V: ab.sqrt() * eps - (1 - ab).sqrt() * x0}[self.prediction]


@pytest.mark.parametrize("prediction", list(Prediction))
def test_every_prediction_type_gives_the_exact_eps_at_fractional_t(prediction):
    """The sigma samplers evaluate at fractional t; reading alpha_bar at floor(t) (the old bug) is off by >1e-3 here."""
    x = PerSampleNoise([0, 1, 2])((3, 2, 4, 4), dtype=torch.float64)
    t = torch.tensor([985.5, 500.25, 3.7], dtype=torch.float64)
    eps = Denoiser(GaussianNet(prediction), SCHED, prediction)(x, t)
    want = Denoiser(GaussianNet(Prediction.EPSILON), SCHED)(x, t)
    assert torch.allclose(eps, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("prediction", [Prediction.V, Prediction.X0])
def test_dpmpp_2m_matches_ddim_at_high_nfe_for_v_and_x0_models(prediction):
    den = Denoiser(GaussianNet(prediction), SCHED, prediction)
    model = lambda x, t: den(x, t)
    z = PerSampleNoise([0, 1])((2, 2, 4, 4), dtype=torch.float64)
    run = lambda **kw: sample(model, SCHED, z, PerSampleNoise([0, 1]), SamplingOptions(threshold="none", **kw))
    ddim, dpm = run(steps=1000), run(steps=100, sampler="dpmpp_2m", schedule="karras")
    exact = MU + S * z  # the probability-flow ODE keeps the standardised coordinate of a Gaussian
    assert (ddim - exact).abs().max() < 1e-2 and (dpm - exact).abs().max() < 1e-2
    assert (dpm - ddim).abs().max() < 1e-2


def _gaussian_model():
    den = Denoiser(GaussianNet(Prediction.EPSILON), SCHED)
    return lambda x, t: den(x, t)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "ddpm", "euler_a"])
def test_start_resumes_a_run_exactly_from_its_own_intermediate_sample(sampler):
    """Stopping after step k and restarting with start=k from that x gives the same image (single-step samplers)."""
    opts = SamplingOptions(steps=8, sampler=sampler, threshold="none")
    seen = {}

    def keep(info):
        if info["i"] == 2:
            seen["x"] = info["x"].clone()
    scale = (plan_alpha_bars(SCHED, opts)[3]) ** -0.5 if sampler in ("euler", "euler_a") else 1.0  # back to VP space
    full = sample(_gaussian_model(), SCHED, PerSampleNoise([5])((1, 2, 4, 4)), PerSampleNoise([5]), opts, callback=keep)
    noise = PerSampleNoise([5])
    for _ in range(3 if sampler in ("ddpm", "euler_a") else 0):
        noise((1, 2, 4, 4))  # the sampler's noise as the full run left it: one draw per finished stochastic step
    resumed = sample(_gaussian_model(), SCHED, seen["x"] / scale, noise, opts, start=3)
    assert torch.allclose(full, resumed, atol=1e-5)


def test_strength_picks_the_start_step():
    opts = SamplingOptions(steps=10)
    assert [start_step(opts, s) for s in (1.0, 0.75, 0.0)] == [0, 2, 10]
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(sample(_gaussian_model(), SCHED, x, PerSampleNoise([0]), opts, start=10), x)  # strength 0: input
    with pytest.raises(ValueError, match="strength"):
        start_step(opts, float("nan"))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "euler_a"])
def test_replace_hook_keeps_the_known_region_exactly(sampler):
    """RePaint's step: the known region is q(x_t | x0_known) at each level, so it ends equal to x0_known."""
    known = torch.full((1, 2, 4, 4), 0.8)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # 1: generate, 0: known
    fresh = PerSampleNoise([9])
    replace = lambda x, ab: mask * x + (1 - mask) * noise_to(known, fresh(x.shape, dtype=x.dtype), ab)
    opts = SamplingOptions(steps=6, sampler=sampler, threshold="none")
    out = sample(_gaussian_model(), SCHED, PerSampleNoise([1])((1, 2, 4, 4)), PerSampleNoise([1]), opts, replace=replace)
    assert torch.allclose(out[..., 2:], known[..., 2:], atol=1e-6)
    assert not torch.allclose(out[..., :2], known[..., :2], atol=1e-2)


def test_keyword_conditioning_passes_through_guidance_to_the_network():
    seen = []

    class Net(torch.nn.Module):
        def forward(self, x, t, context=None, low_res=None):
            seen.append((len(x), None if low_res is None else low_res.shape[0]))
            return x * 0

    den = Denoiser(Net(), SCHED)
    low = torch.zeros(2, 3, 8, 8)
    cond, uncond = {"context": torch.ones(2, 1), "low_res": low}, {"context": torch.zeros(2, 1), "low_res": low}
    ClassifierFreeGuidance(den, 3.0, cond, uncond)(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    Conditioned(den, cond)(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    assert seen == [(4, 4), (2, 2)]  # both CFG branches in one batched call, each with its low_res


class TwoPass(Pipeline):
    """Toy pipeline on the public contract: a text2image base, then a second pass of the same model from step k."""
    kind = "two_pass_test"

    @classmethod
    def from_parts(cls, parts, spec):
        return cls(parts, spec)

    def __call__(self, prompts, seeds, k: int):
        base = Text2ImagePipeline(self.parts["text_encoder"], self.parts["unet"], self.spec.stage("base").diffusion)
        opts = self.spec.stage("refine").sampling
        x0 = base(prompts, seeds, self.spec.stage("base").sampling)
        eps = PerSampleNoise([s + 1000 for s in seeds])(x0.shape)
        x_k = noise_to(x0, eps, plan_alpha_bars(base.schedule, opts)[k])
        return base.denoise(prompts, seeds, opts, x=x_k, start=k)


def test_a_toy_two_stage_pipeline_in_a_few_lines(tiny_model, tmp_path):
    one = load_pipeline(tiny_model)
    stage = one.spec.stages[0]
    refine = type(stage)("refine", "unet", stage.diffusion, SamplingOptions(steps=4, sampler="euler"))
    spec = type(one.spec)("two_pass_test", one.spec.components, [stage, refine])
    TwoPass(one.parts, spec).save_pretrained(tmp_path / "two")
    pipe = load_pipeline(tmp_path / "two")
    assert isinstance(pipe, TwoPass) and [s.name for s in pipe.spec.stages] == ["base", "refine"]
    a, b = pipe(["a red circle"], [0], k=2), pipe(["a red circle"], [0], k=2)
    assert a.shape == (1, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, pipe(["a red circle"], [0], k=1))


def test_first_release_pipeline_json_is_converted_and_saved_as_format_2(shipped, tmp_path):
    legacy = json.loads((BASE32 / "pipeline.json").read_text())
    assert "kind" not in legacy  # the shipped base32 is in the first format
    spec = read_spec(BASE32)
    assert spec.kind == "text2image" and [c.name for c in spec.components] == ["text_encoder", "unet"]
    shipped.save_pretrained(tmp_path / "v2")
    saved = json.loads((tmp_path / "v2" / "pipeline.json").read_text())
    assert saved["format"] == 2 and saved["stages"][0]["diffusion"]["prediction"] == legacy["prediction"]
    again = Text2ImagePipeline.from_pretrained(tmp_path / "v2")
    opts = SamplingOptions(steps=3)
    assert torch.allclose(again(["a red circle"], [0], opts), shipped(["a red circle"], [0], opts), atol=1e-6)


@pytest.mark.parametrize("kind,name", [("clip", "clip32"), ("clip", "noisy_clip32"), ("classifier", "classifier32"),
                                       ("unet", "base32/unet"), ("text_encoder", "base32/text_encoder")])
def test_every_shipped_component_loads_alone(kind, name):
    module = components.load(kind, PACKAGE / "weights" / name)
    assert not module.training and sum(p.numel() for p in module.parameters()) > 0


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def assert_acyclic(graph: dict) -> None:
    """AssertionError naming the first circle found in graph (module -> the modules it imports)."""
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for d in graph.get(n, ()):
            if state.get(d) == "open":
                raise AssertionError(" -> ".join(stack + [n, d]))
            if d not in state:
                visit(d, stack + [n])
        state[n] = "done"
    for n in list(graph):
        if n not in state:
            visit(n, [])


def test_no_import_cycle_at_module_level():
    """Module-level imports inside condiff form a DAG (imports inside functions are lazy and allowed)."""
    graph = {}
    for path in _modules():
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                deps.add(f"{base}.{node.module}" if node.module else base)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("condiff"):
                deps.add(node.module)
        graph[name] = {d for d in deps if d != name}
    assert_acyclic(graph)


def _imports():
    """(importer, imported module, at module level?) for every import of a condiff module, inside functions too."""
    names = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in _modules()}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("condiff")):
                continue
            base = (package.rsplit(".", node.level - 1)[0] if node.level > 1 else package) if node.level else ""
            module = f"{base}.{node.module}" if base and node.module else base or node.module
            for alias in node.names:  # `from . import x` imports the module x
                target = f"{module}.{alias.name}" if f"{module}.{alias.name}" in names else module
                if target != name:
                    yield name, target, id(node) in top


# The layers, lowest first: a module may import its own layer and the ones below, never one above.
LAYERS = [{"fs", "config", "io", "png", "images", "catalogue", "components", "threads"}, {"world"}, {"diffusion"}, {"nets"},
          {"data", "errors"}, {"pipelines", "formats"}, {"eval"}, {"train"}, {"ui"}, {"cli"}]
# Imports inside functions outside the CLI (which imports lazily for a fast --help), each with its reason.
LAZY = {
    ("condiff.eval.autoencoder", "condiff.eval.fd"): "scipy",
    ("condiff.eval.autoencoder", "condiff.world.oracle"): "scipy",
    ("condiff.eval.grid", "condiff.world.oracle"): "scipy",
    ("condiff.eval.real", "condiff.eval.fd"): "scipy, only for the real-data judges' fidelity",
    ("condiff.eval.real", "condiff.eval.metrics"): "the real-data judges' fidelity and the emoji CLIP only",
    ("condiff.pipelines.requests", "condiff.pipelines.controlnet"): "scipy and the oracle, only under a control map",
    ("condiff.train.tasks.autoencoder", "condiff.world.oracle"): "scipy",
    ("condiff.ui.api", "condiff.ui.variations"): "the endpoint named variations would shadow it",
    ("condiff.ui.app", "condiff.ui.api"): "fastapi, only when the API is mounted",
    ("condiff.ui.app", "condiff.world.render"): "the page's module stays under 400 lines",
    ("condiff.ui.app", "condiff.ui.variations"): "the page's module stays under 400 lines",
    ("condiff.ui.app", "condiff.catalogue"): "the page's module stays under 400 lines",
    ("condiff.ui.app", "condiff.pipelines.unclip"): "the page's module stays under 400 lines",
}


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_the_whole_import_graph_has_no_cycle_and_no_arrow_up():
    """Imports inside functions count too: they only defer an arrow, they do not remove it."""
    edges = list(_imports())
    up = sorted({(a, b) for a, b, _ in edges if _layer(b) > _layer(a)})
    assert not up, up
    graph = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    assert_acyclic(graph)


def test_imports_inside_functions_outside_the_cli_are_the_listed_ones():
    lazy = {(a, b) for a, b, top in _imports() if not top and not a.startswith("condiff.cli")}
    assert lazy <= set(LAZY), sorted(lazy - set(LAZY))
    assert set(LAZY) <= lazy, sorted(set(LAZY) - lazy)  # the list stays short: no stale entries
