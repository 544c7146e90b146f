"""ControlNet on the default model, judged by the oracle: does an edge map put the objects where the scene has them?

    OMP_NUM_THREADS=1 python benchmarks/controlnet.py --n 100 --out docs/control/controlnet.json --grid docs/control/controlnet.png
    OMP_NUM_THREADS=1 python benchmarks/controlnet.py --kind segmentation --n 100 --out docs/control/segmentation.json

Scenes: n two-object captions without a relation ("a red circle and a blue square", the world's two-objects
category), each laid out at random by the world's own layout sampler (seed 1000 + i) and rendered; its edge map is
`condiff control edges` of the rendering (nets.controlnet.edge_map; with --kind segmentation its class map,
`condiff control segmentation`, and the shipped segmentation ControlNet). Each caption is drawn three times from seed i,
in the same command: as `generate --control` draws it (the shipped control_edges64, scale 1; the layout stage's
phrases grounded on the map's outlines, pipelines.controlnet.map_grounding), with the map but no boxes (null
grounding tokens, as the ControlNet trained), and without the map (the baseline: the default's own layout stage).
A scene is *placed* when the oracle reads the caption right and each of its two objects (matched
by shape and colour) has its centre within 0.08 of the scene's (a fraction of the image side).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from condiff import components
from condiff.catalogue import CONTROLNETS, model_folder
from condiff.pipelines.controlnet import with_control
from condiff.pipelines.requests import Control, ModelTag, Txt2ImgRequest, txt2img
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.nets.controlnet import edge_map, segmentation_map
from condiff.world.grammar import Category, sample_prompt
from condiff.world.oracle import detect, judge
from condiff.world.render import layout, render, to_uint8

TOLERANCE = 0.08


def placed(image: np.ndarray, caption: str, objects) -> tuple[bool, bool]:
    """(caption right, and every scene object's centre within TOLERANCE of a detected one of its shape and colour)."""
    right = judge(image, caption).correct
    found = detect(image)
    near = all(any(f.shape == o.shape and f.colour == o.colour and abs(f.cx - o.cx) <= TOLERANCE
                   and abs(f.cy - o.cy) <= TOLERANCE for f in found) for o in objects)
    return right, right and near


def scenes(n: int):
    for i in range(n):
        rng = random.Random(1000 + i)
        spec = sample_prompt(rng, Category.TWO_OBJECTS)
        yield spec.caption, layout(spec, rng)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--model", help="the controlled model (default: the shipped default)")
    ap.add_argument("--kind", choices=["edges", "segmentation"], default="edges", help="the control map")
    ap.add_argument("--control-model", help="the ControlNet (default: the shipped one of --kind)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", help="PNG: scene, edge map, with control, with control and no boxes, without (8 columns)")
    args = ap.parse_args()
    args.control_model = args.control_model or str(CONTROLNETS[args.kind])
    make_map = {"edges": edge_map, "segmentation": segmentation_map}[args.kind]
    base = Text2ImagePipeline.from_pretrained(model_folder(args.model))
    controlled = with_control(Text2ImagePipeline.from_pretrained(model_folder(args.model)),
                              components.load("controlnet", args.control_model))
    opts, tag, name = base.defaults, ModelTag("default"), Path(args.control_model).name
    arms = ("control", "control_no_boxes", "baseline")
    rows, grid, t0 = [], [], time.time()
    for i, (caption, objs) in enumerate(scenes(args.n)):
        scene = render([objs], base.resolution)
        m = make_map(scene)
        req = Txt2ImgRequest([caption], [i], opts, control=Control(m, args.kind, args.scale, name))
        drawn = {"control": next(txt2img(controlled, req, tag))[0].pixels,
                 "control_no_boxes": to_uint8(controlled([caption], [i], opts, control_map=m, control_scale=args.scale,
                                                         boxes=[[]]))[0].numpy(),
                 "baseline": to_uint8(base([caption], [i], opts))[0].numpy()}
        rows.append({"caption": caption} | {arm: dict(zip(("right", "placed"), placed(drawn[arm], caption, objs)))
                                            for arm in arms})
        if len(grid) < 8:
            shown = (m[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # (H, W, 1 or 3)
            grid.append(np.concatenate([to_uint8(scene)[0].numpy(), np.broadcast_to(shown, (*shown.shape[:2], 3))]
                                       + [drawn[arm] for arm in arms], 0))
        print(i, caption, *(rows[-1][arm] for arm in arms), flush=True)
    summary = {arm: {k: float(np.mean([r[arm][k] for r in rows])) for k in ("right", "placed")} for arm in arms}
    first8 = {arm: int(sum(r[arm]["placed"] for r in rows[:8])) for arm in arms}
    result = {"n": args.n, "kind": args.kind, "tolerance": TOLERANCE, "control_model": Path(args.control_model).name, "scale": args.scale,
              "sampling": {"steps": opts.steps, "sampler": opts.sampler.value, "guidance_scale": opts.guidance_scale},
              "summary": summary, "placed_of_first_8": first8, "wall_s": round(time.time() - t0, 1), "scenes": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": summary, "placed_of_first_8": first8}))
    if args.grid:
        from PIL import Image
        Image.fromarray(np.concatenate(grid, 1)).resize((64 * len(grid) * 2, 64 * 5 * 2), Image.NEAREST).save(args.grid)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
