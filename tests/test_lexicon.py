"""Colour words a model never saw, read as the nearest basic colour it knows (pipelines/lexicon.py)."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from condiff.catalogue import DEFAULT_MODEL
from condiff.cli import main
from condiff.pipelines.lexicon import colour_names, colour_of, delta_e94, read_colours, srgb_to_lab
from condiff.pipelines.vocabulary import prompt_warnings
from condiff.world.grammar import VOCABULARY

WORLD = list(VOCABULARY)


def test_cielab_and_cie94_match_their_closed_forms():
    assert srgb_to_lab("#ffffff") == pytest.approx((100.0, 0.0, 0.0), abs=0.01)
    assert srgb_to_lab("#000000") == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    assert srgb_to_lab("#ff0000") == pytest.approx((53.24, 80.09, 67.20), abs=0.05)  # the published sRGB red
    assert delta_e94((60, 0, 0), (50, 0, 0)) == pytest.approx(5.0)  # lightness counts half (textiles)
    assert delta_e94((50, 0, 0), (50, 0, 10)) == pytest.approx(10.0)  # all chroma, from a grey reference
    # a pure hue change at chroma 10: dC = 0, dH = |a - b| = 10 * sqrt(2), weighted by 1 + 0.014 * 10
    assert delta_e94((50, 10, 0), (50, 0, 10)) == pytest.approx(10 * 2 ** 0.5 / 1.14)


def test_colour_names_come_from_the_survey_and_a_stem_finds_its_word():
    names = colour_names()
    assert len(names) > 300 and all(" " not in n for n in names)
    assert colour_of("Scarlet") == names["scarlet"] and colour_of("snowy") == names["snow"]
    assert colour_of("reddish") == names["reddish"]  # a listed word is its own colour, before any stem
    assert "limish" not in names and colour_of("limish") == names["lime"]  # the stem with its -e back
    assert colour_of("dog") is None and colour_of("sky") == names["sky"]


def test_an_unknown_colour_word_is_read_as_the_nearest_basic_colour_the_model_knows():
    cases = {"a scarlet circle": "a red circle", "two emerald squares": "two green squares",
             "an azure triangle": "a blue triangle", "a lemon square": "a yellow square",
             "a tangerine circle": "an orange circle", "an aqua circle": "a cyan circle",
             "a snowy square": "a white square", "A navy circle": "A blue circle"}
    for prompt, read in cases.items():
        assert read_colours(prompt, WORLD)[0] == read, prompt
    said, replaced = read_colours("a crimson disc to the left of an amber box", WORLD)
    assert said == "a red disc to the left of an orange box" and replaced == [("crimson", "red"), ("amber", "orange")]
    for kept in ("a red circle", "a circle in the sky", "a photo of a dog", "a scarlet, circle", "a dark red circle",
                 "two circles on a pale background"):  # the survey's modifiers say how light, not which colour
        assert read_colours(kept, WORLD) == (kept, [])  # known; no word after it; past punctuation
    assert read_colours("a scarlet circle", None) == ("a scarlet circle", [])  # no vocabulary: read literally
    assert read_colours("a scarlet circle", ["circle", "dog"]) == ("a scarlet circle", [])  # no colour to read as
    # a model that knows the word reads it itself
    assert read_colours("a crimson circle", WORLD + ["crimson"]) == ("a crimson circle", [])


def test_the_note_says_what_was_read_and_the_warning_reads_the_read_prompt():
    out = prompt_warnings(["a scarlet dog", "a scarlet dog", "a photo of a dog"], WORLD, "m")
    assert out[0] == "note: read 'scarlet' as 'red' (colour_names)" and len(out) == 2
    assert out[1].startswith("warning: the prompt 'a photo of a dog'")
    assert prompt_warnings(["a scarlet dog"], WORLD, "m", literal=True)[0].startswith("warning: the prompt 'a scarlet")


def test_generate_draws_a_read_colour_word_as_the_word_it_is_read_as(tmp_path, capsys):
    def draw(prompt, *flags):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        assert main(["generate", prompt, "--steps", "2", "--seed", "3", "--out", str(out), *flags]) == 0
        return out

    scarlet, red, literal = draw("a scarlet circle"), draw("a red circle"), draw("a scarlet circle", "--literal")
    err = capsys.readouterr().err
    assert err.count("note: read 'scarlet' as 'red'") == 1  # the literal run is not read, so says nothing
    pixels = [np.asarray(Image.open(p)) for p in (scarlet, red, literal)]
    assert (pixels[0] == pixels[1]).all() and (pixels[0] != pixels[2]).any()
    assert Image.open(scarlet).text["parameters"].startswith("a scarlet circle")  # the infotext keeps the words
    assert json.loads((DEFAULT_MODEL / "pipeline.json").read_text())["vocabulary"]  # what the reading reads


def test_the_api_reads_the_same_words_and_says_so_unless_literal():
    from fastapi.testclient import TestClient

    from condiff.ui.api import create_api
    from condiff.ui.service import GenerationService

    client = TestClient(create_api(GenerationService(DEFAULT_MODEL)))

    def post(prompt, **more):
        r = client.post("/api/txt2img", json={"prompt": prompt, "steps": 2, "seed": 5} | more)
        assert r.status_code == 200
        return r.json()

    scarlet, red, literal = post("a scarlet circle"), post("a red circle"), post("a scarlet circle", literal=True)
    assert scarlet["warnings"] == ["note: read 'scarlet' as 'red' (colour_names)"] and literal["warnings"] == []
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r["images"][0])))) for r in (scarlet, red, literal)]
    assert (pixels[0] == pixels[1]).all() and (pixels[0] != pixels[2]).any()
