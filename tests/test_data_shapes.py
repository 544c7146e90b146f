"""`condiff data shapes`: world scenes drawn by the renderer, as an image folder the trainer and the oracle read."""
import json

import numpy as np
from PIL import Image

from condiff.cli import main
from condiff.data.imagefolder import ImageFolder
from condiff.world.oracle import detect, judge


def test_shapes_of_one_prompt_are_read_back_by_the_oracle_at_their_recorded_boxes(tmp_path):
    out = tmp_path / "reds"
    assert main(["data", "shapes", "--prompt", "a red circle to the left of a blue square", "-n", "3",
                 "--out", str(out)]) == 0
    rows = [json.loads(r) for r in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["00000.png", "00001.png", "00002.png"]
    for r in rows:
        image = np.asarray(Image.open(out / r["file_name"]).convert("RGB"))
        assert image.shape == (64, 64, 3) and judge(image, r["text"]).correct
        found = {(o.colour, o.shape): (o.cx, o.cy) for o in detect(image)}
        for b in r["boxes"]:  # the oracle finds each object at the centre of its recorded box
            colour, shape = b["phrase"].split()[-2:]
            cx, cy = found[(colour, shape)]
            x0, y0, x1, y1 = b["box"]
            assert abs(cx - (x0 + x1) / 2) < 0.03 and abs(cy - (y0 + y1) / 2) < 0.03
    assert len({(out / r["file_name"]).read_bytes() for r in rows}) == 3  # three layouts, not one
    assert ImageFolder(str(out), 32).images.shape == (3, 3, 32, 32)


def test_random_captions_and_refusals(tmp_path, capsys):
    assert main(["data", "shapes", "-n", "4", "--seed", "1", "--resolution", "32", "--out", str(tmp_path / "a")]) == 0
    assert main(["data", "shapes", "-n", "4", "--seed", "1", "--resolution", "32", "--out", str(tmp_path / "b")]) == 0
    same = [(tmp_path / d / f"{k:05d}.png").read_bytes() for d in "ab" for k in range(4)]
    assert same[:4] == same[4:] and len(set(same[:4])) == 4  # seeded, and four different scenes
    capsys.readouterr()
    for bad, says in ((["--prompt", "a pink circle"], "unknown word 'pink'"), (["-n", "0"], "--num-images"),
                      (["--resolution", "4"], "--resolution")):
        assert main(["data", "shapes", *bad, "--out", str(tmp_path / "c")]) == 2
        assert says in capsys.readouterr().err and not (tmp_path / "c").exists()
