"""How strongly to steer away from rejections: one guidance run's rounds sampled at several strengths.

    python bench/guidance_strength.py --run /tmp/demo_g20 --scales 0,0.25,0.5,1 --rounds 1,2,3
    python bench/guidance_strength.py --run /tmp/demo_g20 --scales 1 --rounds 3 --intervals "all;0,0.6;0.2,0.8"

Takes a finished ``clinalign demo --objective guidance`` (or bench/feedback_vs_control.py
``compare/``) folder. A guidance finetune learns the rejected classes once; the strength only
changes sampling, so every strength is the same checkpoint sampled with the run's seeds and
sampler and judged by the run's evaluation models. Each is set against that round's control of
equal images (its samples, already drawn by the run, judged again), with the 95 % bootstrap
interval of the difference. Strength 0 is the guidance finetune sampled without guidance: what
training on the verdicts does by itself. ``--intervals`` also guides only the steps whose noise
level lies in LO,HI (``all``: every step; sampling's ``--guidance_interval``).

Prints one JSON line per (round, strength): plausibility and its parts, checklist, FID, and the
difference in plausibility from the control.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinalign.evaluate import bootstrap as bs  # noqa: E402
from clinalign.pipeline.compare import CompareConfig, Pools, judged_folder, make_evaluator, read_table  # noqa: E402
from clinalign.pipeline.rounds import RoundConfig  # noqa: E402
from clinalign.sampling.guidance import parse_interval  # noqa: E402
from clinalign.sampling.sample import sample_folder  # noqa: E402
from clinalign.training.checkpoint import find_checkpoint  # noqa: E402
from clinalign.utils.config import from_dict  # noqa: E402

CONTROL = "no feedback (equal images)"
RATE = ("plausibility", "rate")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished guidance demo or compare folder")
    p.add_argument("--scales", default="0,0.25,0.5,1")
    p.add_argument("--rounds", default="1,2,3")
    p.add_argument("--intervals", default="all", help="';'-separated LO,HI noise intervals, or all")
    args = p.parse_args(argv)

    intervals = ["" if i.strip() == "all" else i.strip() for i in args.intervals.split(";")]
    for interval in intervals:
        parse_interval(interval)  # a bad one fails before any sampling
    table = read_table(args.run)
    rcfg = from_dict(RoundConfig, table["round_config"])  # an older run records fewer or more settings
    ccfg = from_dict(CompareConfig, table["compare_config"])
    if rcfg.objective != "guidance":
        raise SystemExit(f"{args.run}: objective {rcfg.objective!r}; this bench needs a guidance run")
    pools = args.run / "pools"
    evaluator = make_evaluator(
        Pools(pools / "G", pools / "E", pools / "O", pools / "test"),
        find_checkpoint(table["base"]["checkpoint"]).model.image_size,
        ccfg,
        args.run,
        seed=rcfg.seed,
    )
    for k in (int(r) for r in args.rounds.split(",")):
        columns = table["rounds"][k - 1]["columns"]
        checkpoint = find_checkpoint(columns["feedback"]["checkpoint"])
        control_folder = judged_folder(args.run, f"{CONTROL} r{k}")
        control = evaluator.judge(control_folder).samples
        n = ccfg.eval_per_class * len(checkpoint.sample_classes)
        for scale, interval in product((float(s) for s in args.scales.split(",")), intervals):
            where = f" t{interval.replace(',', '-')}" if interval else ""
            folder = judged_folder(args.run, f"feedback r{k} w{scale:g}{where}")
            scfg = rcfg.sample_config(n, ccfg.eval_seed, guidance=scale)
            sample_folder(checkpoint, folder, dataclasses.replace(scfg, guidance_interval=interval))
            s = evaluator.judge(folder).samples
            pl = s.metrics["plausibility"]
            d = bs.difference(
                pl["rate"], s.replicates[RATE], control.metrics["plausibility"]["rate"], control.replicates[RATE]
            )
            print(
                json.dumps(
                    {
                        "round": k,
                        "scale": scale,
                        "interval": interval or "all",
                        "plausibility": round(pl["rate"], 3),
                        "class_consistent": round(pl["oracle_rate"], 3),
                        "on_manifold": round(pl["manifold_rate"], 3),
                        "checklist": round(pl["checklist_rate"], 3),
                        "fid": round(s.metrics["fid"], 3),
                        "control": round(control.metrics["plausibility"]["rate"], 3),
                        "minus_control": [round(d.value, 3), round(d.low, 3), round(d.high, 3)],
                        "per_class": {c: round(v["rate"], 3) for c, v in pl["per_class"].items()},
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
