"""``clinalign data`` (make, import, split and check image folders) and ``clinalign verdicts`` (experts' sheets)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ..errors import ConfigError
from ..utils.config import add_flags, resolve, str2bool
from . import medmnist, toy
from .folder import ImageFolderDataset
from .importing import ImportConfig, import_images
from .pools import POOL_NAMES, split_pools, write_pools
from .verdicts import import_verdicts

DEFAULT_DOWNLOAD_DIR = Path("~/.medmnist")  # the medmnist package's own cache: its files are reused


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="make or check an image folder",
        description="Make an image folder (toy cells offline, or MedMNIST) or check one.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="<command>")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)

    p = sub.add_parser(
        "toy",
        help="generate toy blood-cell images (offline)",
        description="Generate procedural blood-cell images named CLASS_SUBTYPE_000000.png.",
    )
    p.add_argument("--classes", type=int, default=4, help=f"how many of {', '.join(toy.CLASS_NAMES)} (in that order)")
    p.add_argument("--per_class", type=int, default=100)
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout",
        choices=("prefix", "imagenet"),
        default="prefix",
        help="prefix: OUT/CLASS_*.png; imagenet: OUT/CLASS/CLASS_*.png",
    )
    p.set_defaults(func=run_toy)

    p = sub.add_parser(
        "medmnist",
        help="export a MedMNIST split as PNGs",
        description="Write one split of a MedMNIST .npz as OUT/CLASS_000123.png.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--npz", type=Path, help="a MedMNIST .npz file on disk")
    source.add_argument("--download", metavar="FLAG", help="download the official file, e.g. bloodmnist")
    p.add_argument("--size", type=int, default=28, choices=medmnist.SIZES, help="resolution to download")
    p.add_argument("--download_dir", type=Path, default=DEFAULT_DOWNLOAD_DIR, help="where downloads are kept")
    p.add_argument("--split", choices=medmnist.SPLITS, default="train")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--layout", choices=("prefix", "imagenet"), default="prefix")
    p.add_argument("--flag", default=None, help="which MedMNIST set the --npz is (default: bloodmnist)")
    p.set_defaults(func=run_medmnist)

    _register_inspect(sub)
    _register_import(sub)
    _register_pools(sub)
    _register_verdicts(subparsers)


def _register_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="count images per class and find unreadable files",
        description="Decode every image of a folder as training would, and report.",
    )
    p.add_argument("folder", type=Path)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--class_cond", type=str2bool, default=True)
    p.set_defaults(func=run_inspect)


def _register_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="bring your own labelled images in as train/val/test folders",
        description="Read class folders (SRC/CLASS/**/img.jpg), seed-named folders (CLASS_*.png), a CSV of "
        "path,class or a MedMNIST .npz, and write OUT/train, OUT/val, OUT/test named CLASS_<original stem>, "
        "split per class with a seed, plus OUT/import.json (source, split, counts, fingerprints).",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="a folder, a .csv (path,class) or a MedMNIST .npz")
    p.add_argument("out", type=Path, metavar="OUT", help="output folder (new or empty)")
    add_flags(p, ImportConfig)
    p.set_defaults(func=cmd_import)


def _register_pools(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pools",
        help="split real training images into the generator's, the expert's and the oracle's pools",
        description="Write OUT/G (REAL_PER_CLASS images per class for the generator), OUT/E and OUT/O (the rest, "
        "halved by a name hash, for the simulated expert and the evaluation oracle) as links to the originals, "
        "and OUT/pools.json.",
    )
    p.add_argument("--train", type=Path, required=True, help="the real training folder (seed naming)")
    p.add_argument("--real_per_class", type=int, default=128, help="images per class in G (the paper's 128)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="which images of each class go to G")
    p.set_defaults(func=cmd_pools)


def _register_verdicts(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verdicts",
        help="bring experts' verdicts from a spreadsheet in",
        description="Turn a CSV of verdicts into the feedback layout (CLASS/align, CLASS/notalign).",
    )
    sub = parser.add_subparsers(dest="verdicts_command", metavar="<command>")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)
    p = sub.add_parser(
        "import",
        help="CSV of ID,class,verdict[,reviewer,reasons] -> OUT/CLASS/align|notalign + judgements.csv",
        description="Copy the judged samples into OUT/CLASS/align/ (plausible) and OUT/CLASS/notalign/ "
        "(implausible), file names kept, and write OUT/judgements.csv. Verdicts: plausible/implausible, 1/0, "
        "yes/no, align/notalign. Several reviewers per image: the majority decides; ties are left out and listed.",
    )
    p.add_argument("csv", type=Path, metavar="FILE.csv", help="columns ID,class,verdict[,reviewer,reasons]")
    p.add_argument("--samples", type=Path, required=True, help="the sample folder the IDs refer to")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.set_defaults(func=cmd_verdicts)


class _Bar:
    """Adapts a tqdm bar to the library's ``progress(done, total)`` callbacks."""

    def __init__(self, total: int | None, desc: str, unit: str = "img", **kwargs) -> None:
        self.bar = tqdm(total=total, desc=desc, unit=unit, **kwargs)

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def run_toy(args: argparse.Namespace) -> int:
    with _Bar(None, "toy cells") as bar:
        paths = toy.generate(args.out, args.classes, args.per_class, args.size, args.seed, args.layout, progress=bar)
    names = sorted(toy.CLASS_NAMES[: args.classes])
    print(
        f"wrote {len(paths)} images ({args.per_class} per class: {', '.join(names)}), "
        f"{args.size}x{args.size}, seed {args.seed}, to {args.out}"
    )
    return 0


def run_medmnist(args: argparse.Namespace) -> int:
    if args.download:
        if args.flag and args.flag.lower() != args.download.lower():
            raise ConfigError(f"--download {args.download} and --flag {args.flag} disagree; drop --flag")
        flag = args.download
        with _Bar(None, f"downloading {flag}", unit="B", unit_scale=True) as bar:
            npz = medmnist.download(flag, args.download_dir.expanduser(), args.size, progress=bar)
        print(f"downloaded {npz} (md5 verified)")
    else:
        flag, npz = args.flag or "bloodmnist", args.npz
    with _Bar(None, f"exporting {args.split}") as bar:
        count = medmnist.export_npz(npz, args.split, args.out, args.layout, flag, progress=bar)
    print(f"wrote {count} {flag} {args.split} images to {args.out}")
    _print_counts(Counter(medmnist.class_counts(npz, args.split, flag)), order=medmnist.class_names(flag))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    dataset = ImageFolderDataset(
        args.folder, args.image_size, class_cond=args.class_cond, skip_bad_images=True, cache=False
    )
    print(
        f"{args.folder}: {len(dataset)} images, {dataset.channels} channel(s), "
        f"{'RGB' if dataset.channels == 3 else 'grayscale'}, read at {args.image_size}x{args.image_size}"
    )
    if args.class_cond:
        _print_counts(Counter(dataset.class_map.names[y] for y in dataset.labels), order=dataset.class_map.names)
    if dataset.skipped:
        print(f"{dataset.n_skipped} file(s) cannot be decoded (training needs --skip_bad_images True or fixing them):")
        for path in dataset.skipped:
            print(f"  {dataset.skip_reasons[path]}")
        return 1
    print("no unreadable files")
    return 0


def _print_counts(counts: Counter, order: list[str] | None = None) -> None:
    names = order or sorted(counts)
    width = max(len(name) for name in names)
    for index, name in enumerate(names):
        print(f"  {index:>3}  {name:<{width}}  {counts.get(name, 0):>7}")


def cmd_import(args: argparse.Namespace) -> int:
    cfg = resolve(ImportConfig, args)
    with _Bar(None, "importing") as bar:
        result = import_images(args.src, args.out, cfg, progress=bar)
    source = result.record["source"]
    how = f"resized to {cfg.size}x{cfg.size} PNG" if cfg.size else "PNG as stored" if result.kind == "npz" else "copied"
    print(f"imported {source['images']} images from {args.src} ({result.kind}, {how}) into {args.out}")
    _print_table(result.counts)
    split = result.record["split"]
    print(f"split {'/'.join(f'{f:g}' for f in split) if isinstance(split, list) else split}, seed {cfg.seed}")
    for name, print_ in result.record["fingerprints"].items():
        print(f"  {name:<5}  fingerprint {print_}  {args.out / name}")
    print(f"record: {args.out / 'import.json'}")
    return 0


def _print_table(counts: dict[str, dict[str, int]]) -> None:
    splits = list(counts)
    classes = sorted({c for per in counts.values() for c in per})
    width = max(len("class"), *(len(c) for c in classes))
    print(f"  {'class':<{width}}" + "".join(f"  {s:>7}" for s in splits) + f"  {'total':>7}")
    for c in classes + ["total"]:
        row = [sum(counts[s].values()) if c == "total" else counts[s].get(c, 0) for s in splits]
        print(f"  {c:<{width}}" + "".join(f"  {n:>7}" for n in row) + f"  {sum(row):>7}")


def cmd_pools(args: argparse.Namespace) -> int:
    pools = split_pools(args.train, args.real_per_class, args.seed)
    folders = write_pools(pools, args.out)
    summary = pools.summary()
    print(f"pools of {args.train} ({args.real_per_class} per class in G, seed {args.seed}) in {args.out}:")
    for name in POOL_NAMES:
        s = summary[name]
        classes = len(s["classes"])
        print(f"  {name}  {s['n']:>7} images  {classes} classes  fingerprint {s['fingerprint']}  {folders[name]}")
    return 0


def cmd_verdicts(args: argparse.Namespace) -> int:
    result = import_verdicts(args.csv, args.samples, args.out)
    decided = sum(sum(v.values()) for v in result.counts.values())
    print(f"wrote {decided} judged images from {result.votes} verdicts to {result.out} (+ judgements.csv)")
    width = max(len("class"), *(len(c) for c in result.counts))
    print(f"  {'class':<{width}}  {'align':>7}  {'notalign':>8}")
    for cls, n in sorted(result.counts.items()):
        print(f"  {cls:<{width}}  {n['align']:>7}  {n['notalign']:>8}")
    if result.ties:
        shown = ", ".join(result.ties[:10]) + (", ..." if len(result.ties) > 10 else "")
        print(f"left out {len(result.ties)} tied image(s) (see excluded.csv): {shown}")
    if result.unjudged:
        print(f"{result.unjudged} sample(s) in {args.samples} have no verdict in {args.csv}")
    return 0
