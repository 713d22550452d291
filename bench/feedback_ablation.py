"""Where a feedback round's effect comes from: finetunes of one base on one round's judged samples.

    python bench/feedback_ablation.py --run clinalign-demo --out /tmp/ablation

Takes a finished ``clinalign demo`` (or bench/feedback_vs_control.py ``compare/``) folder: its base
checkpoint, pools and round ``--round``'s samples and rewards. Each variant finetunes the base for
``--steps`` steps with the round's recipe (real batch at beta 1 beside the judged batch) and is
sampled and judged with the same seeds and the run's evaluation models. Variants (``--variants``):

- ``real``: the equal-images control through the finetune's code path: both batches real (the
  judged batch replaced by G, every weight 1), so it trains on as many real images as the other
  variants process in all;
- ``zero``: every synthetic weight 0, so only the real batch trains, through the finetune's code
  path (separates the finetune machinery from the effect of the judged samples);
- ``verdicts``: the round's rewards as the round used them;
- ``balanced``: accepted samples reweighted so that each class's accepted samples weigh the same in
  total (a class the expert mostly rejects is not drowned by the classes it accepts);
- ``kto``: Diffusion-KTO on the verdicts (``--kto_beta``);
- ``guidance``: ``--objective guidance`` on the verdicts (rejected samples train CLASS-rejected,
  sampling steers away from it at ``--guidance_scale``);
- ``guidance-shuffled``: the same, the verdicts shuffled within each class (same count rejected per
  class, the expert's choice of which images gone): what guidance gains without the expert's eye;
- ``self-guidance``: the same with every sample rejected (no expert at all): guidance away from the
  model's own samples;
- ``guidance-rejected-only``: guidance with the accepted samples at weight 0 (the classes learn from
  the real batch only; the samples teach only the rejected classes).

A guidance variant takes its strength after ``@`` (``guidance@0.5``; else ``--guidance_scale``). The
strength only changes sampling, so the variants of one kind share one finetune.

Sampling (sampler, steps, precision) and the judge (oracle settings) are the run's own, read from
its ``compare.json``, so the ``base`` line matches the run's "pretrained" column.

Prints one JSON line per variant: plausibility and its parts, per-class plausibility, FID.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinalign.data.naming import label_of, list_images  # noqa: E402
from clinalign.pipeline.compare import CompareConfig, Pools, make_evaluator, read_table  # noqa: E402
from clinalign.pipeline.rounds import RoundConfig, blind_rewards  # noqa: E402
from clinalign.sampling.sample import sample_folder  # noqa: E402
from clinalign.training.checkpoint import find_checkpoint, latest_checkpoint  # noqa: E402
from clinalign.training.finetune import finetune, read_rewards_csv, write_rewards_csv  # noqa: E402
from clinalign.utils.config import from_dict  # noqa: E402


def balanced(rewards: dict[str, float]) -> dict[str, float]:
    accepted = collections.Counter(label_of(k) for k, v in rewards.items() if v >= 0.5)
    share = sum(accepted.values()) / max(len(accepted), 1)
    return {k: share / accepted[label_of(k)] if v >= 0.5 else 0.0 for k, v in rewards.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished demo or compare folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--variants", default="real,zero,verdicts,balanced,kto,guidance,guidance-shuffled,self-guidance")
    p.add_argument("--guidance_scale", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--kto_beta", type=float, default=5000.0)
    p.add_argument("--per_class", type=int, default=0, help="samples per class judged (0: the run's own)")
    args = p.parse_args(argv)

    run, pools, rnd = args.run, args.run / "pools", args.run / f"round_{args.round}"
    base = latest_checkpoint(run / "pretrain")
    if base is None:
        raise SystemExit(f"{run}/pretrain: no checkpoint (pass a finished demo folder)")
    args.out.mkdir(parents=True, exist_ok=True)
    rewards = read_rewards_csv(rnd / "finetune_rewards.csv")
    real_names = {p.name: 1.0 for p in list_images(pools / "G")}
    files = {
        "real": write_rewards_csv(args.out / "real.csv", real_names),
        "zero": write_rewards_csv(args.out / "zero.csv", dict.fromkeys(rewards, 0.0)),
        "verdicts": rnd / "finetune_rewards.csv",
        "balanced": write_rewards_csv(args.out / "balanced.csv", balanced(rewards)),
        "kto": rnd / "finetune_rewards.csv",
        "guidance": rnd / "finetune_rewards.csv",
        "guidance-shuffled": write_rewards_csv(args.out / "shuffled.csv", blind_rewards(rewards, "shuffled")),
        "self-guidance": write_rewards_csv(args.out / "self.csv", blind_rewards(rewards, "all-rejected")),
        "guidance-rejected-only": rnd / "finetune_rewards.csv",
    }
    # the run's sampling and judge, so the base line is the run's "pretrained" column and its cached
    # evaluation models are reused (sampling in another precision moved the base by 7 points)
    if not (run / "compare.json").exists():
        raise SystemExit(
            f"{run}/compare.json: missing (pass a demo folder, or a bench's compare/ with pretrain/ and pools/)"
        )
    table = read_table(run)
    rcfg = from_dict(RoundConfig, table["round_config"])
    ccfg = dataclasses.replace(from_dict(CompareConfig, table["compare_config"]), utility=False)
    folders = Pools(pools / "G", pools / "E", pools / "O", pools / "test")
    evaluator = make_evaluator(folders, base.model.image_size, ccfg, run, seed=rcfg.seed)
    n_samples = (args.per_class or ccfg.eval_per_class) * len(base.class_map)

    def judge(name: str, checkpoint, guidance: float = -1.0) -> None:
        folder = args.out / "judged" / name
        if not folder.exists():
            scfg = rcfg.sample_config(n_samples, ccfg.eval_seed, guidance=guidance)
            sample_folder(find_checkpoint(checkpoint), folder, scfg)
        m = evaluator.judge(folder).samples.metrics
        pl = m["plausibility"]
        print(
            json.dumps(
                {
                    "variant": name,
                    "plausibility": round(pl["rate"], 3),
                    "class_consistent": round(pl["oracle_rate"], 3),
                    "on_manifold": round(pl["manifold_rate"], 3),
                    "checklist": round(pl["checklist_rate"], 3),
                    "per_class": {c: round(v["rate"], 3) for c, v in pl["per_class"].items()},
                    "fid": round(m["fid"], 3),
                }
            ),
            flush=True,
        )

    judge("base", base.path)
    for name in args.variants.split(","):
        kind, _, scale = name.partition("@")
        if kind not in files or (scale and "guidance" not in kind):
            raise SystemExit(f"unknown variant {name!r}: use {', '.join(files)} (guidance ones may end @SCALE)")
        out = args.out / kind
        if latest_checkpoint(out) is None:
            finetune(
                {
                    "resume_checkpoint": str(base.path),
                    "data_pre_dir": str(pools / "G"),
                    "data_mod_dir": str(pools / "G" if kind == "real" else rnd / "samples"),
                    "rewards": str(files[kind]),
                    "run_dir": str(out),
                    "beta": 1.0,
                    "reward_transform": "raw" if kind == "balanced" else "threshold",
                    "objective": "kto" if kind == "kto" else "guidance" if "guidance" in kind else "reward-weighted",
                    "kto_beta": args.kto_beta,
                    "guidance_scale": args.guidance_scale,
                    "guidance_accepted_weight": 0.0 if kind == "guidance-rejected-only" else 1.0,
                    "max_steps": args.steps,
                    "lr": args.lr,
                    "batch_size": args.batch_size,
                    "ema_rate": "0.999",
                    "use_fp16": True,
                    "seed": 0,
                    "save_interval": args.steps,
                    "log_interval": 25,
                }
            )
        judge(name, latest_checkpoint(out).path, float(scale or args.guidance_scale) if "guidance" in kind else -1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
