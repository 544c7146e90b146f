"""WebDataset shards: export, indexed reading (no image bytes read until a batch needs them), corrupt samples
skipped and counted, and training on them through the same path as any data."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from condiff.cli import main
from condiff.data.imagefolder import DataError
from condiff.data.shards import ShardDataset, split_key, world_samples, write_shards
from condiff.data.world import WorldStream

from conftest import TINY


def test_world_shards_read_back_as_the_world_renders_them(tmp_path):
    pattern = write_shards(world_samples(40, 16), str(tmp_path / "s"), per_shard=16)
    assert pattern.endswith("shard-{000000..000002}.tar")
    data = ShardDataset(pattern, 16)
    world = WorldStream(16)
    raw = world.raw(0, 0, 256)
    images, captions = world.materialize(raw)
    assert data.captions == captions[:40] and data.box_lists == world.boxes(raw)[:40]
    got, _ = data.materialize(list(range(40)))
    assert (got - images[:40]).abs().max() <= 1 / 127.5 + 1e-6  # PNG of the uint8 render: exact to the rounding
    assert data.vocab and data.skipped == 0
    a, b = data.batch(3, 7, 8), data.batch(3, 7, 8)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]  # a batch is a function of (seed, step)
    assert data.shard(list(range(8)), slice(2, 4)) == [2, 3]


def test_keys_group_as_webdataset_groups_them():
    assert split_key("dir/abc.seg.png") == ("dir/abc", "seg.png") and split_key("x.txt") == ("x", "txt")


def test_an_undecodable_image_is_skipped_counted_and_its_boxes_follow(tmp_path):
    samples = list(world_samples(3, 16))
    samples[1]["png"] = b"not a png at all"
    data = ShardDataset(write_shards(samples, str(tmp_path / "s"), per_shard=10), 16)
    images, captions = data.materialize([1, 0])
    assert data.skipped == 1 and captions == [data.captions[2], data.captions[0]]
    assert data.boxes([1, 0]) == [data.box_lists[2], data.box_lists[0]]


def test_bad_shards_are_one_line(tmp_path, capsys):
    with pytest.raises(DataError, match="missing shard"):
        ShardDataset(str(tmp_path / "x-{000000..000001}.tar"), 16)
    (tmp_path / "bad.tar").write_bytes(b"\x00" * 100 + b"garbage")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    for name, message in (("bad.tar", "holds no samples|cannot read shard"), ("empty.tar", "holds no samples")):
        with pytest.raises(DataError, match=message):
            ShardDataset(str(tmp_path / name), 16)


def test_export_and_train_on_shards_through_the_cli(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(np.full((20, 24, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": "a red circle", "boxes": [{"phrase": "a red circle", "box": [0, 0, 0.5, 0.5]}]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows))
    assert main(["data", "export-shards", str(tmp_path / "fs"), "--from", str(folder), "--per-shard", "3"]) == 0
    pattern = capsys.readouterr().out.strip().splitlines()[-1]
    data = ShardDataset(pattern, 16)
    assert len(data.records) == 4 and data.box_lists[0][0]["phrase"] == "a red circle"
    assert main(["data", "export-shards", str(tmp_path / "ws"), "--count", "24", "--per-shard", "12", "--resolution", "16"]) == 0
    pattern = capsys.readouterr().out.strip().splitlines()[-1]
    cfg = json.loads(json.dumps(TINY))
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "run"), "--data", pattern,
                 "--workers", "0"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert saved["source"] == "shards" and saved["path"] == pattern
    assert main(["data", "export-shards", str(tmp_path / "z"), "--count", "0"]) == 2


def test_shards_written_by_plain_tarfile_stream_into_training(tmp_path):
    """Shards from someone else's code: a plain tar of KEY.png + KEY.txt (no webdataset), under a folder prefix."""
    pattern = str(tmp_path / "shard-{000000..000001}.tar")
    for n in range(2):
        with tarfile.open(tmp_path / f"shard-{n:06d}.tar", "w") as tar:
            for k in range(3):
                for ext, data in (("png", _png_bytes(30 * k + n)), ("txt", b"a blue square")):
                    info = tarfile.TarInfo(f"sub/s{n}_{k}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, __import__("io").BytesIO(data))
    data = ShardDataset(pattern, 16)
    assert len(data.records) == 6 and set(data.captions) == {"a blue square"}
    (tmp_path / "c.json").write_text(json.dumps(TINY))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "run"), "--data", pattern,
                 "--workers", "0"]) == 0


def _png_bytes(v: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), v, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_folder_too_large_for_memory_streams_the_same_batches(tmp_path):
    from condiff.data.imagefolder import ImageFolder

    rows = []
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a red circle {i}"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows))
    ram, disk = ImageFolder(str(tmp_path), 16), ImageFolder(str(tmp_path), 16, memory_limit_mb=0)
    assert not ram.streams and disk.streams and disk.images is None
    for step in range(3):
        a, b = ram.batch(0, step, 4), disk.batch(0, step, 4)
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    (tmp_path / "3.png").write_bytes(b"broken")
    images, captions = disk.materialize([3, 0])
    assert disk.skipped == 1 and captions == ["a red circle 4", "a red circle 0"]


def _bad_images() -> dict[str, bytes]:
    """Files no training run may crash on: each would fail at decode (or, the bomb, before it)."""
    import io

    good = _png_bytes(90)
    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, format="PNG")  # 25 M pixels in a few KB: refused before decoding
    return {"truncated.png": good[: len(good) // 2], "empty.png": b"", "text.png": b"not an image at all",
            "bomb.png": bomb.getvalue()}


def _odd_modes() -> dict[str, bytes]:
    """Images in modes other than RGB, which decode (converted to RGB) and are used."""
    import io

    out = {}
    for name, mode, fmt in (("grey16.png", "I;16", "PNG"), ("cmyk.tif", "CMYK", "TIFF"), ("palette.png", "P", "PNG"),
                            ("alpha.png", "LA", "PNG")):
        buf = io.BytesIO()
        Image.new(mode, (20, 12)).save(buf, format=fmt)
        out[name] = buf.getvalue()
    return out


@pytest.mark.parametrize("memory_limit_mb", [2048, 0], ids=["in-memory", "streamed"])
def test_bad_images_in_a_folder_are_skipped_counted_and_training_goes_on(tmp_path, tiny_config_path, memory_limit_mb,
                                                                         capsys):
    from condiff.data.imagefolder import ImageFolder

    files = {"good.png": _png_bytes(30), **_bad_images(), **_odd_modes()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": n, "text": f"a picture {n}"})
                                                       for n in files))
    ds = ImageFolder(str(tmp_path), 16, memory_limit_mb=memory_limit_mb)
    images, captions = ds.materialize(list(range(len(ds.captions))))
    used = {c.split()[-1] for c in captions}
    assert used == {"good.png", *_odd_modes()} and images.shape[1:] == (3, 16, 16)
    assert images.isfinite().all() and images.abs().max() <= 1
    assert ds.skipped == len(_bad_images())  # each bad file counted once
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config_path), "--out", str(out), "--data", str(tmp_path),
                 "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "skipped=" in captured.err and f"skipped {len(_bad_images())} unusable images" in captured.out


@pytest.mark.parametrize("memory_limit_mb", [2048, 0], ids=["in-memory", "streamed"])
def test_a_folder_with_no_usable_image_is_a_one_line_error(tmp_path, tiny_config_path, memory_limit_mb, capsys):
    for name, data in _bad_images().items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": n, "text": "a picture"})
                                                       for n in _bad_images()))
    config = tmp_path / "c.json"
    config.write_text(json.dumps(TINY | {"data": TINY["data"] | {"memory_limit_mb": memory_limit_mb}}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--data", str(tmp_path),
                 "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no usable image" in err.strip().splitlines()[-1] or \
        "can be decoded" in err.strip().splitlines()[-1]


def test_bad_samples_in_shards_are_skipped_and_counted(tmp_path):
    import io

    with tarfile.open(tmp_path / "x-000000.tar", "w") as tar:
        for i, (name, data) in enumerate([("a.png", _png_bytes(10)), *_bad_images().items(), *_odd_modes().items()]):
            ext = name.rsplit(".", 1)[1]
            for member, payload in ((f"{i:04d}.{ext}", data), (f"{i:04d}.txt", b"a red circle")):
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    data = ShardDataset(str(tmp_path / "x-{000000..000000}.tar"), 16)
    images, _ = data.materialize(list(range(len(data.captions))))
    assert data.skipped == len(_bad_images()) and images.isfinite().all()
