"""Language beyond the grammar (world/language.py): paraphrases keep their meaning, the lists stay apart, the
training stream and the layout prior's targets carry them, and the bench's language suites judge them."""
import json
import random

import pytest

from condiff.cli import main
from condiff.data.world import WorldStream
from condiff.nets.layout_prior import LayoutPriorConfig
from condiff.nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder
from condiff.train.tasks.layout_prior import targets
from condiff.world.grammar import VOCABULARY, Category, sample_prompt
from condiff.world.language import (COLOUR_SYNONYMS, FORMS, MORE_COLOURS, MORE_FORMS, MORE_RELATIONS, MORE_SHAPES,
                                    NUMBER_SYNONYMS, RELATION_PHRASES, SHAPE_SYNONYMS, SIZE_SYNONYMS, language_suite,
                                    paraphrase, training_words)
from condiff.world.oracle import judge
from condiff.world.render import layout, render, to_uint8

SEEN = set(VOCABULARY) | set(training_words())
SEEN2 = set(VOCABULARY) | set(training_words(2))  # training list 2: list 1 and several more of each


def _held_out_words() -> set[str]:
    words = {syn[1] for t in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, SIZE_SYNONYMS) for syn in t.values()}
    words |= {syn[1].split()[1] for syn in NUMBER_SYNONYMS.values()}  # "pair", "trio", "quartet"
    words |= {w for phr in RELATION_PHRASES.values() for p in phr[1] for w in p.split()} - set(VOCABULARY) - {"on"}
    return words


@pytest.mark.parametrize("seen", [SEEN, SEEN2], ids=["list1", "list2"])
def test_the_held_out_lists_share_no_naming_word_with_training(seen):
    assert not _held_out_words() & seen
    for forms in FORMS.values():  # each held-out sentence form has a word training never shows
        assert all({w for w in f.split() if not w.startswith("{")} - seen for f in forms[1])


def test_training_list_2_says_every_one_of_its_words_and_list_1_none_of_them():
    more = {w for t in (MORE_COLOURS, MORE_SHAPES) for syn in t.values() for w in syn}
    more |= {w for forms in MORE_FORMS.values() for f in forms for w in f.split() if not w.startswith("{")} - SEEN
    more |= {w for ps in MORE_RELATIONS.values() for p in ps for w in p.split()} - SEEN
    assert {"alone", "plus", "sits", "atop", "west"} <= more
    said = {1: set(), 2: set()}
    for version in (1, 2):
        rng = random.Random(5)
        for k in range(3000):
            p = paraphrase(sample_prompt(rng, list(Category)[k % 4]), rng, version=version)
            assert set(p.caption.split()) <= (SEEN2 if version == 2 else SEEN), p.caption
            said[version] |= set(p.caption.split()) | {w[:-1] for w in p.caption.split()}  # plurals too
    assert more <= said[2] and not (more - set(VOCABULARY)) & said[1]
    with pytest.raises(ValueError, match="training list 3"):
        paraphrase(sample_prompt(random.Random(0), Category.SINGLE), random.Random(0), version=3)


@pytest.mark.parametrize("split", ["train", "held_out"])
def test_a_paraphrase_names_each_object_and_means_its_spec(split):
    rng = random.Random(0)
    for k in range(200):
        spec = sample_prompt(rng, list(Category)[k % 4])
        p = paraphrase(spec, rng, split)
        assert p.spec == spec and len(p.phrases) == len(spec.objects)
        at = 0
        for phrase in dict.fromkeys(p.phrases):  # in the caption, in the objects' order
            at = p.caption.index(phrase, at) + len(phrase)
        if split == "train":
            assert set(p.caption.split()) <= SEEN, p.caption
        else:
            assert set(p.caption.split()) - SEEN, p.caption  # something training never shows


def test_the_suites_are_stable_distinct_and_never_the_grammar_caption():
    for split in ("train", "held_out"):
        suite = language_suite(split, 12)
        assert [p.caption for p in language_suite(split, 6)] == [p.caption for p in suite[:6]]
        assert len({p.caption for p in suite}) == 12 and all(p.caption != p.spec.caption for p in suite)
        assert [p.spec.category for p in suite[:4]] == list(Category)


def test_the_oracle_judges_a_rendered_scene_right_under_its_paraphrase():
    for p in language_suite("held_out", 8):
        px = to_uint8(render([layout(p.spec, random.Random(1))], 64))[0].numpy()
        assert judge(px, p.spec).correct, p.caption


@pytest.mark.parametrize("version", [1, 2])
def test_the_stream_says_the_same_scenes_in_other_words_and_the_prior_finds_every_phrase(version):
    plain, said = WorldStream(16, True), WorldStream(16, True, paraphrase=0.5, paraphrase_list=version)
    raw0, raw = plain.raw(3, 7, 64), said.raw(3, 7, 64)
    assert (plain.materialize(raw0)[0] == said.materialize(raw)[0]).all()  # the scenes do not change
    changed = sum(a != b for a, b in zip(raw0[1], raw[1]))
    assert 16 <= changed <= 48 and set(training_words(version)) <= set(said.vocab)
    boxes = said.boxes(raw)
    assert [[b["box"] for b in x] for x in boxes] == [[b["box"] for b in x] for x in plain.boxes(raw0)]
    enc = PretrainedTextEncoder(PretrainedTextConfig())  # the real WordPiece offsets
    seqs = targets(raw[1], boxes, enc.tokenizer, LayoutPriorConfig(bins=64))
    for seq, b in zip(seqs.tolist(), boxes):  # one span and box per object: every phrase was found
        assert sum(t != -100 for t in seq[::6]) - 1 == len(b)


def test_the_layout_prior_fine_tunes_from_a_saved_one(tmp_path):
    from condiff import components
    from condiff.config import ConfigError
    from condiff.train.tasks import load_train_config as load_task_config
    from condiff.train.trainer import setup

    cfg_path = tmp_path / "p.json"
    cfg = {"model": "layout_prior", "data": {"paraphrase": 0.5}, "init": {"from_model": "condiff/weights/layout64"},
           "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1}}
    cfg_path.write_text(json.dumps(cfg))
    run = setup(load_task_config(cfg_path), tmp_path / "run", device="cpu")
    shipped = components.load("layout_prior", "condiff/weights/layout64/layout_prior").state_dict()
    assert all((run.model.state_dict()[k] == v.float()).all() for k, v in shipped.items())
    cfg_path.write_text(json.dumps(cfg | {"prior": {"width": 64}}))
    with pytest.raises(ConfigError, match="init.from_model"):
        setup(load_task_config(cfg_path), tmp_path / "run2", device="cpu")


def test_bench_language_suites_draw_each_paraphrase_beside_its_grammar_twin(tmp_path):
    assert main(["eval", "bench", "--language", "--prompts-per-category", "1", "--n-per-prompt", "1", "--steps", "1",
                 "--out-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {s: [r for r in report["samples"] if r["suite"] == s] for s in report["table"]}
    for split in ("train", "held_out"):
        (p,), (g,) = rows[f"language_{split}"], rows[f"language_{split}/grammar"]
        suite = language_suite(split, 1)[0]
        assert (p["prompt"], g["prompt"]) == (suite.caption, suite.spec.caption) and p["seed"] == g["seed"]
    assert main(["eval", "bench", "--language", "--model", "condiff/weights/base32", "--prompts-per-category", "1",
                 "--n-per-prompt", "1", "--steps", "1", "--out-dir", str(tmp_path / "b")]) == 2
