"""Time to quality: each training objective's FID and plausibility against training time, as JSON.

    OMP_NUM_THREADS=1 python bench/convergence.py --data ../shared/data/pbc_64 --out /tmp/conv
    OMP_NUM_THREADS=1 python bench/convergence.py --data toy --out /tmp/conv_toy --steps 600 --every 150

Every variant trains the same model (the feedback bench's 32 px denoiser) on the same data (pool G
of ``--real_per_class`` images per class, as bench/feedback_vs_control.py makes it) with the same
seed, batch and learning rate, checkpointing every ``--every`` steps. Each checkpoint is sampled
with the same sampler and seeds and judged by one evaluator (oracle and FID features trained on
pool O, FID against the test split). Variants (``--variants``):

- ``eps``: ε-prediction (improved-diffusion's default), ``x0``: x_0-prediction, ``v``:
  v-prediction (Salimans & Ho 2022), ``eps+minsnr``: ε with min-SNR-γ weighting (Hang et al.
  2023, γ = ``--snr_gamma``); a ``:bf16`` suffix trains with bf16 autocast instead of fp32.

Time is steps × the variant's median seconds per step inside the loop (metrics.jsonl), so a
variant's curve is not stretched by whatever else ran while it trained; bf16 and fp32 differ only
there. ``time_to_reference`` is the time each variant needs to reach the FID that the reference
(``--reference``, default ``eps``) reaches at its last checkpoint, interpolated between
checkpoints (null when never reached). Writes OUT/convergence.json and OUT/convergence.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedback_vs_control import BASE_MODEL  # noqa: E402

from clinalign.data.pools import read_pools, split_pools, write_pools, write_toy_pools  # noqa: E402
from clinalign.pipeline.compare import CompareConfig, Pools, make_evaluator  # noqa: E402
from clinalign.pipeline.curve import pretraining_curve  # noqa: E402
from clinalign.sampling.sample import SampleConfig  # noqa: E402

OBJECTIVES = {
    "eps": {"predict_xstart": False, "prediction": "eps"},
    "x0": {"predict_xstart": False, "prediction": "x0"},
    "v": {"predict_xstart": False, "prediction": "v"},
    "eps+minsnr": {"predict_xstart": False, "prediction": "eps", "snr_gamma": None},  # γ from --snr_gamma
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="toy", help="a folder with train/ and test/ (seed naming), or 'toy'")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", default="eps,x0,v,eps+minsnr")
    p.add_argument("--reference", default="eps", help="the variant whose final FID sets the target")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--snr_gamma", type=float, default=5.0)
    p.add_argument("--real_per_class", type=int, default=128)
    p.add_argument("--per_class", type=int, default=32, help="samples per class at every checkpoint")
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--sample_steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_pools(args: argparse.Namespace) -> Pools:
    if args.data == "toy":
        f = write_toy_pools(args.out / "pools", 4, args.real_per_class, 400, 400, 100, BASE_MODEL["image_size"], 0)
        return Pools(f["G"], f["E"], f["O"], f["test"], read_pools(args.out / "pools"))
    data = Path(args.data)
    split = split_pools(data / "train", args.real_per_class, 0)
    folders = write_pools(split, args.out / "pools")
    return Pools(folders["G"], folders["E"], folders["O"], data / "test", split.summary())


def variant_settings(name: str, args: argparse.Namespace) -> dict:
    objective, _, precision = name.partition(":")
    if objective not in OBJECTIVES or precision not in ("", "fp32", "bf16"):
        raise SystemExit(f"unknown variant {name!r}: use {', '.join(OBJECTIVES)} with an optional :bf16")
    settings = {k: (args.snr_gamma if v is None else v) for k, v in OBJECTIVES[objective].items()}
    return {**settings, "use_fp16": precision == "bf16"}


def train_variant(name: str, pools: Pools, args: argparse.Namespace) -> Path:
    from clinalign.training.pretrain import pretrain

    run = args.out / "runs" / name.replace(":", "_")
    cfg = {**BASE_MODEL, **variant_settings(name, args)}
    cfg.update(
        data_dir=str(pools.generator),
        run_dir=str(run),
        batch_size=args.batch_size,
        lr=args.lr,
        ema_rate="0.999",
        max_steps=args.steps,
        save_interval=args.every,
        log_interval=50,
        seed=args.seed,
    )
    pretrain(cfg, progress=True)
    return run


def seconds_per_step(run: Path, batch: int) -> float:
    """Median seconds per step over the run's logged intervals (images/s measured inside the loop)."""
    rates = [json.loads(line)["images_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return batch / statistics.median(rates)


def time_to(rows: list[dict], target: float, sec_per_step: float) -> float | None:
    """Seconds until FID first reaches ``target``, linear between checkpoints (None if never)."""
    prev_step, prev_fid = 0, None
    for row in rows:
        step, fid = row["step"], row["fid"]
        if fid is not None and fid <= target:
            if prev_fid is None or prev_fid == fid:
                return step * sec_per_step
            frac = (prev_fid - target) / (prev_fid - fid)
            return (prev_step + frac * (step - prev_step)) * sec_per_step
        prev_step, prev_fid = step, fid
    return None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        secs = [row["step"] * r["seconds_per_step"] / 60 for row in r["curve"]]
        axes[0].plot(secs, [row["fid"] for row in r["curve"]], marker="o", label=name)
        axes[1].plot(secs, [row["plausibility"] for row in r["curve"]], marker="o", label=name)
    axes[0].set(xlabel="training minutes (1 CPU thread)", ylabel="FID (domain features)", yscale="log")
    axes[1].set(xlabel="training minutes (1 CPU thread)", ylabel="plausibility (oracle on O)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    pools = make_pools(args)
    ccfg = dataclasses.replace(CompareConfig(), utility=False)
    judge = make_evaluator(pools, BASE_MODEL["image_size"], ccfg, args.out, args.seed, progress=True)
    results = {}
    for name in args.variants.split(","):
        run = train_variant(name, pools, args)
        n_classes = len(json.loads((run / "class_map.json").read_text())["names"])
        sample = SampleConfig(
            num_samples=args.per_class * n_classes,
            sampler=args.sampler,
            steps=args.sample_steps,
            batch_size=64,
            seed=1234,
        )
        rows = pretraining_curve(run, judge, args.out / "curves" / name.replace(":", "_"), sample, args.every)
        results[name] = {"seconds_per_step": seconds_per_step(run, args.batch_size), "curve": rows}
    target = results[args.reference]["curve"][-1]["fid"]
    ref_time = time_to(results[args.reference]["curve"], target, results[args.reference]["seconds_per_step"])
    for r in results.values():
        r["time_to_reference"] = time_to(r["curve"], target, r["seconds_per_step"])
        r["speedup"] = ref_time / r["time_to_reference"] if r["time_to_reference"] else None
    summary = {
        "bench": "convergence",
        "data": str(args.data),
        "pools": pools.summary,
        "reference": args.reference,
        "target_fid": target,
        "sampler": f"{args.sampler} {args.sample_steps}",
        "args": {k: str(v) for k, v in vars(args).items()},
        "variants": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "convergence.json").write_text(json.dumps(summary, indent=1, default=str))
    plot(results, args.out / "convergence.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "variants"}, default=str))
    for name, r in results.items():
        final = r["curve"][-1]
        print(
            json.dumps(
                {
                    "variant": name,
                    "s_per_step": round(r["seconds_per_step"], 4),
                    "final_fid": final["fid"],
                    "final_plausibility": final["plausibility"],
                    "time_to_reference_s": r["time_to_reference"],
                    "speedup": r["speedup"],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
