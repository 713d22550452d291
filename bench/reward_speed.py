"""Reward scoring speed: images/s of ``clinalign reward score`` on a folder of small PNGs.

    python bench/reward_speed.py                      # 4,000 32x32 images, default model, 3 runs
    python bench/reward_speed.py --n 4000 --size 32 --variants

Prints one JSON object: the end-to-end rate (list + decode + network + CSV, median of ``--runs``
after one warm-up), and separately the decode-only and network-only rates so a slow figure can
be attributed. ``--variants`` also times the network alone as fp32 NCHW, fp32 channels_last,
bf16 autocast and with BatchNorm folded into the convolutions: the numbers behind the choices in
``RewardModel.logits`` (timed at the thread count scoring uses). The target is 2,000 images/s at
32x32 on a 2-core CPU.

The model is freshly initialised (speed does not depend on the weights); the images are toy
cells (PNG decode time depends on content, so noise would be unrepresentative).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clinalign.data.classmap import ClassMap  # noqa: E402
from clinalign.data.folder import images_to_tensor  # noqa: E402
from clinalign.data.toy import toy_arrays, toy_class_map  # noqa: E402
from clinalign.data.transforms import save_png  # noqa: E402
from clinalign.reward.model import DEFAULT_STEM_STRIDE, DEFAULT_WIDTH, RewardModel, RewardNet  # noqa: E402
from clinalign.reward.score import _decode_batch, list_scored_images, score_folder, thread_plan  # noqa: E402


def make_folder(root: Path, n: int, size: int, classes: int) -> Path:
    """``n`` PNGs named ``CLASS_xxxxx.png``: 50 distinct toy cells per class, repeated."""
    per_class = min(50, -(-n // classes))
    images, labels, _ = toy_arrays(classes, per_class, size, seed=0)
    names = toy_class_map(classes).names
    for i in range(n):
        j = i % len(images)
        save_png(images[j], root / f"{names[labels[j]]}_{i:06d}.png")
    return root


def median_rate(fn, n: int, runs: int) -> tuple[float, list[float]]:
    fn()  # warm-up: oneDNN picks kernels, the page cache fills
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), [round(r, 1) for r in rates]


def fold_bn(net: RewardNet) -> RewardNet:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()
    t = net.trunk
    if not hasattr(t, "stem"):
        return net
    t.stem[0] = fuse_conv_bn_eval(t.stem[0], t.stem[1])
    t.stem[1] = torch.nn.Identity()
    for b in t.stages:
        b.conv1, b.bn1 = fuse_conv_bn_eval(b.conv1, b.bn1), torch.nn.Identity()
        b.conv2, b.bn2 = fuse_conv_bn_eval(b.conv2, b.bn2), torch.nn.Identity()
        if isinstance(b.skip, torch.nn.Sequential):
            b.skip = fuse_conv_bn_eval(b.skip[0], b.skip[1])
    return net


def network_variants(model: RewardModel, x: torch.Tensor, c: torch.Tensor, batch: int, runs: int) -> dict:
    net = model.net.eval()
    folded = fold_bn(net)

    def run(m, xx, bf16=False):
        def go():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for i in range(0, len(xx), batch):
                    m(xx[i : i + batch], c[i : i + batch])

        return go

    xc = x.contiguous()
    xl = x.contiguous(memory_format=torch.channels_last)
    out = {}
    for name, fn in (
        ("fp32_nchw", run(net.to(memory_format=torch.contiguous_format), xc)),
        ("fp32_channels_last", run(net.to(memory_format=torch.channels_last), xl)),
        ("bf16_channels_last", run(net, xl, bf16=True)),
        ("fp32_channels_last_bn_folded", run(folded.to(memory_format=torch.channels_last), xl)),
    ):
        out[name] = round(median_rate(fn, len(x), runs)[0], 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    ap.add_argument("--stem_stride", type=int, default=DEFAULT_STEM_STRIDE)
    ap.add_argument("--batch_size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    ap.add_argument("--variants", action="store_true", help="also time network variants (fp32/bf16/layout/BN fold)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="reward-bench-") as tmp:
        root = Path(tmp)
        images = make_folder(root / "images", args.n, args.size, args.classes)
        class_map = ClassMap(toy_class_map(args.classes).names)
        net = RewardNet(len(class_map), 3, args.width, "resnet", args.stem_stride).eval()
        model = RewardModel(
            net,
            class_map,
            1.0,
            args.size,
            3,
            {
                "arch": "resnet",
                "width": args.width,
                "stem_stride": args.stem_stride,
                "hidden": net.proj.out_features,
                "dropout": 0.1,
            },
        )
        model.save(root / "ckpt")
        model = RewardModel.load(root / "ckpt")

        end_to_end, runs = median_rate(
            lambda: score_folder(root / "ckpt", images, root / "rewards.csv", args.batch_size), args.n, args.runs
        )
        paths, classes = list_scored_images(images)
        decode, _ = median_rate(lambda: _decode_batch(paths, args.size, 3), args.n, args.runs)
        pixels = _decode_batch(paths, args.size, 3)[0]
        x = images_to_tensor(pixels)
        c = model.class_indices(classes)
        all_threads = torch.get_num_threads()
        network_all, _ = median_rate(lambda: model.logits(x, c, args.batch_size), args.n, args.runs)
        decode_threads, score_threads = thread_plan()
        torch.set_num_threads(score_threads)  # what score_folder runs the network with
        network, _ = median_rate(lambda: model.logits(x, c, args.batch_size), args.n, args.runs)
        variants = network_variants(model, x, c, args.batch_size, args.runs) if args.variants else None
        torch.set_num_threads(all_threads)
        result = {
            "bench": "reward_score",
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "images": args.n,
            "image_size": args.size,
            "classes": args.classes,
            "model": {
                "arch": "resnet",
                "width": args.width,
                "stem_stride": args.stem_stride,
                "params": sum(p.numel() for p in model.net.parameters()),
            },
            "batch_size": args.batch_size,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": all_threads,
            "score_threads": {"decode": decode_threads, "torch": score_threads},
            "images_per_s": round(end_to_end, 1),
            "runs_images_per_s": runs,
            "decode_only_images_per_s": round(decode, 1),
            "decode_share_of_serial_time": round((1 / decode) / (1 / decode + 1 / network), 3),
            "network_only_images_per_s": round(network, 1),
            f"network_only_images_per_s_at_{all_threads}_threads": round(network_all, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        if variants:
            result[f"network_variants_images_per_s_at_{score_threads}_threads"] = variants
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
