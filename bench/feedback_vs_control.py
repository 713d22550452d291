"""Feedback against the same cost without feedback, in the paper's regime (small G, knowledgeable expert).

    python bench/feedback_vs_control.py --data ../shared/data/pbc_64 --real_per_class 128 --out /tmp/fvc

1. Pools: G = --real_per_class images per class of DATA/train (stratified, seeded), E and O the rest
   (disjoint halves), DATA/test for FID and TSTR (clinalign.data.pools).
2. Pretraining on G to --pretrain_steps, a checkpoint every --curve_every steps (or --base_run).
3. The pretraining curve: every checkpoint sampled with the same seeds and judged (plausibility and
   its parts, checklist, FID, memorisation of G); the base is the plateau (or --base_step).
4. K rounds of feedback (simulated expert on E) against no feedback at equal images and at equal
   steps and rejection sampling, every column judged by one evaluator (oracle on O).

Prints a JSON summary; writes OUT/curve/curve.json, OUT/curve.png, OUT/compare/compare.json and .md.
Every stage resumes: rerun the same command after an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinalign.data.pools import read_pools, split_pools, write_pools, write_toy_pools  # noqa: E402
from clinalign.pipeline.compare import CompareConfig, Comparison, Pools, make_evaluator  # noqa: E402
from clinalign.pipeline.curve import plateau_step, plot_curve, pretraining_curve  # noqa: E402
from clinalign.pipeline.rounds import RoundConfig  # noqa: E402
from clinalign.sampling.sample import SampleConfig  # noqa: E402
from clinalign.training.checkpoint import find_checkpoint, list_checkpoints  # noqa: E402
from clinalign.utils.config import add_flags, resolve  # noqa: E402

# The paper's regime on a CPU: the demo's small denoiser at 32 px, x0-prediction, bf16.
BASE_MODEL = {
    "image_size": 32,
    "num_channels": 32,
    "num_res_blocks": 1,
    "attention_resolutions": "8",
    "num_heads": 2,
    "class_cond": True,
    "diffusion_steps": 1000,
    "noise_schedule": "cosine",
    "predict_xstart": True,
}
# Measured defaults for PBC (see docs/feedback.md): a strict expert, beta 1 with a full real batch.
ROUND_DEFAULTS = {
    "samples_per_class": 96,
    "finetune_steps": 300,
    "finetune_lr": 5e-4,
    "finetune_batch": 32,
    "beta": 1.0,
    "reward_transform": "threshold",
    "tau": 0.9,
    "reward_epochs": 15,
    "use_fp16": True,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/pbc_64",
        help="a folder with train/ and test/ in the seed's naming, or 'toy' for fresh toy cells",
    )
    p.add_argument("--toy_classes", type=int, default=4, help="--data toy: classes")
    p.add_argument("--toy_pool_per_class", type=int, default=400, help="--data toy: cells per class in E and in O")
    p.add_argument(
        "--label_noise",
        "--toy_label_noise",
        type=float,
        default=0.0,
        help="share of G per class that is another class's cell under its name (E, O and test stay clean)",
    )
    p.add_argument(
        "--num_channels", type=int, default=BASE_MODEL["num_channels"], help="the denoiser's width (8: capacity-bound)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--real_per_class", type=int, default=128, help="size of G per class (the paper: 128)")
    p.add_argument("--pool_seed", type=int, default=0)
    p.add_argument("--base_run", type=Path, help="an existing pretraining run on G (skips pretraining)")
    p.add_argument("--pretrain_steps", type=int, default=16000)
    p.add_argument("--pretrain_lr", type=float, default=1e-3)
    p.add_argument("--prediction", default="x0", choices=("eps", "x0", "v"), help="what the denoiser predicts")
    p.add_argument("--curve_every", type=int, default=1000)
    p.add_argument("--curve_per_class", type=int, default=48, help="samples per class at each curve point")
    p.add_argument("--base_step", type=int, default=0, help="the base checkpoint's step (0 = the curve's plateau)")
    p.add_argument("--threads", type=int, default=0)
    add_flags(p.add_argument_group("compare"), CompareConfig)
    add_flags(p.add_argument_group("each round"), RoundConfig, defaults=ROUND_DEFAULTS)
    return p.parse_args(argv)


def make_pools(args: argparse.Namespace) -> Pools:
    if str(args.data) == "toy":
        f = write_toy_pools(
            args.out / "pools",
            args.toy_classes,
            args.real_per_class,
            args.toy_pool_per_class,
            args.toy_pool_per_class,
            100,
            BASE_MODEL["image_size"],
            args.pool_seed,
            args.label_noise,
        )
        return Pools(f["G"], f["E"], f["O"], f["test"], read_pools(args.out / "pools"))
    split = split_pools(args.data / "train", args.real_per_class, args.pool_seed, args.label_noise)
    folders = write_pools(split, args.out / "pools")
    return Pools(folders["G"], folders["E"], folders["O"], args.data / "test", split.summary())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rcfg, ccfg = resolve(RoundConfig, args), resolve(CompareConfig, args)
    pools = make_pools(args)

    run = args.base_run or args.out / "pretrain"
    if args.base_run is None:
        from clinalign.training.pretrain import pretrain

        pretrain(
            {
                **BASE_MODEL,
                **({} if args.prediction == "x0" else {"predict_xstart": False, "prediction": args.prediction}),
                "num_channels": args.num_channels,
                "data_dir": str(pools.generator),
                "run_dir": str(run),
                "batch_size": 32,
                "lr": args.pretrain_lr,
                "ema_rate": "0.999",
                "max_steps": args.pretrain_steps,
                "save_interval": args.curve_every,
                "log_interval": 100,
                "use_fp16": True,
                "seed": rcfg.seed,
                "device": rcfg.device,
            },
            progress=True,
        )
    image_size = find_checkpoint(run).model.image_size
    evaluator = make_evaluator(pools, image_size, ccfg, args.out, rcfg.seed, progress=True)
    # The curve needs no TSTR classifiers (minutes per point); the same cached oracle judges it.
    curve_judge = make_evaluator(pools, image_size, dataclasses.replace(ccfg, utility=False), args.out, rcfg.seed)
    curve_sample = SampleConfig(
        num_samples=args.curve_per_class * len(find_checkpoint(run).class_map),
        sampler=rcfg.sampler,
        steps=rcfg.steps,
        batch_size=rcfg.sample_batch,
        seed=ccfg.eval_seed,
        use_fp16=rcfg.use_fp16,
        device=rcfg.device,
    )
    rows = pretraining_curve(run, curve_judge, args.out / "curve", curve_sample, args.curve_every, progress=True)
    base_step = args.base_step or plateau_step(rows)
    plot_curve(rows, args.out / "curve.png", base_step)
    base = next(p for p in list_checkpoints(run) if find_checkpoint(p).step == base_step)

    table = Comparison(base, pools, args.out / "compare", rcfg, ccfg, progress=True, evaluator=evaluator).run()
    summary = {
        "bench": "feedback_vs_control",
        "data": str(args.data),
        "base_step": base_step,
        "pools": pools.summary,
        "round_config": asdict(rcfg),
        "compare_config": asdict(ccfg),
        "oracle_test_accuracy": evaluator.models.info.get("test_accuracy"),
        "real_test": table.get("real_test"),
        "curve": rows,
        "rounds": table["rounds"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
