"""The words a model records from its training captions, and the one-line warning for a prompt naming none of them."""
import base64
import json
import shutil

from condiff.catalogue import DEFAULT_MODEL
from condiff.cli import main
from condiff.pipelines.vocabulary import prompt_warnings, unknown_prompt_warning, vocabulary_of
from condiff.world.grammar import VOCABULARY

WORLD = list(VOCABULARY)  # the grammar's words, already sorted and split


def test_a_prompt_is_warned_about_only_when_it_names_no_known_word():
    w = unknown_prompt_warning("a photo of  a dog", WORLD, "m")
    assert w.startswith("warning: the prompt 'a photo of a dog' names nothing model 'm' was trained on")
    assert "\n" not in w and "23 words" in w  # the grammar's 29 words less a, an, and, of, the, to
    for named in ("a red circle", "A RED, circle!", "a crimson circle next to an azure box", "two dogs"):
        assert unknown_prompt_warning(named, WORLD, "m") is None
    assert unknown_prompt_warning("the", WORLD, "m") is not None  # function words name nothing
    assert unknown_prompt_warning("", WORLD, "m") is None and unknown_prompt_warning("  ", WORLD, "m") is None
    assert unknown_prompt_warning("a photo of a dog", None, "sd") is None  # no recorded vocabulary: never
    assert unknown_prompt_warning("x" * 500, WORLD, "m").count("x") == 80
    warned = prompt_warnings(["a dog", "a red circle", "a dog", "a cat"], WORLD, "m")
    assert [w.split("'")[1] for w in warned] == ["a dog", "a cat"]


def test_vocabulary_of_joins_captions_and_more_words():
    assert vocabulary_of(["A crimson picture, photo 3."], ["red circle"], None) == \
        ["3", "a", "circle", "crimson", "photo", "picture", "red"]


def test_a_fine_tune_records_its_words_joined_with_its_bases_and_samples_as_its_base(tiny_model, tiny_config_path, tmp_path):
    from condiff.config import load_json
    from condiff.train.config import TrainConfig
    from condiff.train.trainer import setup

    assert json.loads((tiny_model / "pipeline.json").read_text())["vocabulary"] == WORLD
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    spec = json.loads((base / "pipeline.json").read_text())
    spec["stages"][0]["sampling"] |= {"steps": 7, "sampler": "dpmpp_2m"}
    (base / "pipeline.json").write_text(json.dumps(spec | {"vocabulary": ["crimson"]}))
    cfg = load_json(TrainConfig, tiny_config_path)
    cfg.init.from_model = str(base)
    run = setup(cfg, tmp_path / "run", device="cpu")
    pipe = run.task.pipeline(run)
    assert pipe.spec.vocabulary == sorted(WORLD + ["crimson"])
    assert (pipe.defaults.steps, pipe.defaults.sampler.value) == (7, "dpmpp_2m")  # it samples as its base did


def test_generate_and_the_api_warn_and_still_draw(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from condiff.ui.api import create_api
    from condiff.ui.service import GenerationService

    assert main(["generate", "a photo of a dog", "a red circle", "--steps", "1", "--out", str(tmp_path / "x.png")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "'a photo of a dog' names nothing model" in err[0]
    assert (tmp_path / "x-000.png").is_file() and (tmp_path / "x-001.png").is_file()  # drawn all the same
    client = TestClient(create_api(GenerationService(DEFAULT_MODEL)))
    for prompt, warned in (("a photo of a dog", 1), ("a red circle", 0)):
        r = client.post("/api/txt2img", json={"prompt": prompt, "steps": 1, "seed": 0})
        assert r.status_code == 200 and base64.b64decode(r.json()["images"][0])[:4] == b"\x89PNG"
        assert len(r.json()["warnings"]) == warned and all("names nothing" in w for w in r.json()["warnings"])
