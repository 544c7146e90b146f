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
