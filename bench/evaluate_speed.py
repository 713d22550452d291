"""Time fitting the evaluation models (oracle + features) and the simulated expert, and scoring.

    python bench/evaluate_speed.py                 # toy cells, 4 classes x 300, 32 px
    python bench/evaluate_speed.py --pbc           # also ../shared/data/pbc_64 at 32 px
    python bench/evaluate_speed.py --threads 1     # torch threads (1 is faster on a busy 2-core box)

Prints one JSON line per measurement: what, config, seconds, and the quality reached.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from clinalign.evaluate.data import ImageSet
from clinalign.evaluate.oracle import EvaluationModels, OracleConfig
from clinalign.evaluate.plausibility import RealReference
from clinalign.evaluate.run import MetricConfig, evaluate_samples
from clinalign.evaluate.utility import UtilityConfig
from clinalign.expert.simulator import ExpertConfig, ExpertSimulator

PBC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc_64"


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def bench(
    name: str,
    real: ImageSet,
    test: ImageSet | None,
    samples: ImageSet,
    oracle: OracleConfig,
    expert: ExpertConfig,
    metrics: MetricConfig,
) -> None:
    t = time.perf_counter()
    models = EvaluationModels.fit(real, test, oracle)
    emit(
        what="fit oracle+features",
        data=name,
        config=vars(oracle),
        seconds=round(time.perf_counter() - t, 1),
        n_train=models.info["n_train"],
        test_accuracy=round(models.info["test_accuracy"], 4),
        test_balanced_accuracy=round(models.info["test_balanced_accuracy"], 4),
    )
    t = time.perf_counter()
    ex = ExpertSimulator.fit(real, expert)
    emit(
        what="fit expert",
        data=name,
        config=vars(expert),
        seconds=round(time.perf_counter() - t, 1),
        n_train=ex.info["n_train"],
        val_accuracy=round(ex.info["val_accuracy"], 4),
    )
    t = time.perf_counter()
    ref = RealReference.build(models, real, test, metrics.k, metrics.max_reference)
    emit(what="embed real reference", data=name, seconds=round(time.perf_counter() - t, 1), n=len(ref.train))
    t = time.perf_counter()
    res = evaluate_samples(models, real, samples, test=test, config=metrics, reference=ref)
    s = res.metrics["sets"]["samples"]
    emit(
        what="score samples (held-out real)",
        data=name,
        n=len(samples),
        seconds=round(time.perf_counter() - t, 1),
        plausible=round(s["plausibility"]["rate"], 3),
        real_test_plausible=round(res.metrics["real"]["real_test"]["plausibility"]["rate"], 3),
        expert_plausible=round(float(ex.judge(samples.images, samples.classes)[0].mean()), 3),
        utility=s.get("utility", {}).get("real_only", {}).get("accuracy"),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--pbc", action="store_true")
    p.add_argument("--pbc_width", type=int, default=32)
    p.add_argument("--pbc_epochs", type=int, default=10)
    p.add_argument("--pbc_size", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    emit(bench="env", torch=torch.__version__, threads=torch.get_num_threads())
    metrics = MetricConfig(bootstrap=200, utility=UtilityConfig())
    real, fresh = ImageSet.from_toy(4, 300, 32, 0), ImageSet.from_toy(4, 50, 32, 1, id_suffix="-1")
    bench("toy 4x300 32px", real, None, fresh, OracleConfig(image_size=32), ExpertConfig(image_size=32), metrics)
    if a.pbc and PBC.exists():
        t = time.perf_counter()
        real = ImageSet.from_folder(PBC / "train", a.pbc_size)
        test = ImageSet.from_folder(PBC / "test", a.pbc_size)
        emit(what="decode pbc_64 train+test", seconds=round(time.perf_counter() - t, 1), n=len(real) + len(test))
        samples = test.subset(np.arange(0, len(test), 4))
        bench(
            f"pbc_64 at {a.pbc_size}px",
            real,
            test,
            samples,
            OracleConfig(image_size=a.pbc_size, width=a.pbc_width, epochs=a.pbc_epochs),
            ExpertConfig(image_size=a.pbc_size, epochs=a.pbc_epochs),
            metrics,
        )


if __name__ == "__main__":
    main()
