"""Property-based fuzzing (hypothesis): whatever the input, a result or one clear ValueError, never another exception.

A few hundred cases here; more with HYPOTHESIS_PROFILE=long (10,000 per property)."""
import io
import json
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from condiff.cli.layout import parse_boxes
from condiff.images import box_mask, mask_image, open_image
from condiff.world.grammar import PromptError, parse_caption

settings.register_profile("default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20)
box = st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 2), min_size=0, max_size=6)
record = st.fixed_dictionaries({"phrase": st.text(max_size=20) | st.integers(), "box": box})


@given(st.text(max_size=200) | st.lists(record, max_size=6).map(json.dumps) | json_values.map(json.dumps))
def test_the_box_parser_answers_boxes_or_one_line(text):
    try:
        boxes = parse_boxes(text, "--boxes")
    except ValueError as e:
        assert "\n" not in str(e) and str(e).startswith("--boxes")
        return
    for b in boxes:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and b["phrase"].strip()


@given(st.text(max_size=60))
def test_the_caption_grammar_parses_or_names_the_problem(text):
    try:
        parse_caption(text)
    except PromptError as e:
        assert "\n" not in str(e)


@given(st.binary(max_size=300))
def test_image_bytes_open_or_fail_in_one_line(data):
    try:
        img = open_image(data, "image")
    except ValueError as e:
        assert str(e).startswith("image:") and "\n" not in str(e)
        return
    assert img.mode == "RGB"


@given(st.one_of(st.text(max_size=30), st.lists(st.integers(-5, 40) | st.floats() | st.text(max_size=3), max_size=6)))
def test_boxes_in_pixels_are_inside_the_image_or_refused(value):
    try:
        m = box_mask(value, 16, 16, "box")
    except ValueError as e:
        assert str(e).startswith("box:") and "\n" not in str(e)
        return
    assert m.size == (16, 16)


@given(st.integers(1, 24), st.integers(1, 24), st.integers(0, 255))
def test_masks_of_another_size_or_empty_are_refused(w, h, level):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h), level).save(buf, format="PNG")
    try:
        m = mask_image(buf.getvalue(), (16, 16), "mask")
    except ValueError as e:
        assert (w, h) != (16, 16) and "must match" in str(e) or level < 128 and "empty" in str(e)
        return
    assert (w, h) == (16, 16) and level >= 128 and m.size == (16, 16)


@pytest.fixture(scope="module")
def service(tiny_model):
    from condiff.ui.service import GenerationService

    return GenerationService(tiny_model)


payload = st.fixed_dictionaries({
    "prompt": st.text(max_size=40) | st.sampled_from(["a red circle", "two blue squares", ""]),
    "negative_prompt": st.text(max_size=10),
    "seed": st.integers(-3, 2 ** 33), "steps": st.integers(-2, 2000), "guidance_scale": st.floats(),
    "sampler": st.sampled_from(["ddim", "DDIM", "plms", "heun", ""]), "num_images": st.integers(-1, 40),
    "guide": st.sampled_from(["none", "clip", "magic"]), "guide_scale": st.floats(),
    "guidance_rescale": st.floats(), "layout": st.none() | st.lists(record, max_size=3)})


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload)
def test_every_txt2img_payload_validates_or_is_refused_naming_a_field(service, fields):
    """The service's checks, as the API runs them before any work (generation itself is tested elsewhere)."""
    from condiff.ui.service import RequestError, Txt2ImgRequest

    req = Txt2ImgRequest(**fields)
    try:
        service.validate(req)
        service.check_layout(req)
    except RequestError as e:
        field = str(e).split(":")[0]
        assert field in {*fields, "sampler"} and "\n" not in str(e)


def _png(w: int, h: int, level: int = 255) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h), level).save(buf, format="PNG")
    return buf.getvalue()


edit_payload = st.fixed_dictionaries({
    "prompt": st.text(max_size=30) | st.sampled_from(["a red circle", ""]),
    "image": st.none() | st.binary(max_size=40) | st.builds(_png, st.integers(1, 40), st.integers(1, 40)),
    "negative_prompt": st.text(max_size=10), "seed": st.integers(-3, 2 ** 33), "steps": st.integers(-2, 2000),
    "guidance_scale": st.floats(), "sampler": st.sampled_from(["ddim", "heun", "x"]),
    "strength": st.floats(), "mask": st.none() | st.binary(max_size=20) | st.builds(_png, st.integers(1, 40),
                                                                                  st.integers(1, 40), st.integers(0, 255)),
    "box": st.none() | st.lists(st.integers(-5, 50) | st.floats(), max_size=5)})


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edit_payload, st.booleans())
def test_every_edit_payload_validates_or_is_refused_naming_a_field(service, fields, inpaint):
    """img2img and inpaint: the checks the service makes before any work."""
    from condiff.ui.service import EditRequest, RequestError

    try:
        service._edit_inputs(EditRequest(**fields), inpaint)
    except RequestError as e:
        assert str(e).split(":")[0] in {*fields, "sampler", "inpaint"} and "\n" not in str(e)


config_value = st.none() | st.booleans() | st.integers(-10, 10 ** 6) | st.floats() | st.text(max_size=8) | \
    st.lists(st.integers(-2, 8), max_size=4)


@st.composite
def train_configs(draw):
    """Mostly real keys of a training config (so the checks behind the key names are reached), some unknown ones."""
    keys = {"model": st.sampled_from(["text2image", "clip", "classifier", "autoencoder", "upsampler", "layout_prior",
                                      "unclip", "nonsense"]),
            "seed": config_value, "precision": st.sampled_from(["fp32", "bf16", "fp8"]) | config_value,
            "optim": st.dictionaries(st.sampled_from(["steps", "batch_size", "lr", "warmup_steps", "micro_batches",
                                                      "grad_clip", "ema_decay", "lrr"]), config_value, max_size=4),
            "unet": st.dictionaries(st.sampled_from(["model_channels", "channel_mult", "num_res_blocks",
                                                     "attention_resolutions", "head_channels"]), config_value,
                                    max_size=3),
            "data": st.dictionaries(st.sampled_from(["resolution", "source", "path", "memory_limit_mb"]),
                                    config_value, max_size=3),
            "checkpoint_every": config_value, "nonsense": config_value}
    chosen = draw(st.lists(st.sampled_from(sorted(keys)), unique=True, max_size=6))
    return {k: draw(keys[k]) for k in chosen}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(train_configs() | json_values)
@example({"\n": 1})  # found by the 10,000-case run: an unknown key was quoted raw, newline and all
@example({"seed": "x" * 100_000})
def test_every_training_config_loads_or_is_refused_in_one_line(tmp_path_factory, data):
    """`condiff train --config FILE` reads and checks the file before any work: a config, or one ConfigError line."""
    from condiff.config import ConfigError
    from condiff.train.tasks import load_train_config

    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_text(json.dumps(data, allow_nan=True))
    try:
        load_train_config(path)
    except (ConfigError, ValueError) as e:
        assert "\n" not in str(e) and 0 < len(str(e)) < 1000
