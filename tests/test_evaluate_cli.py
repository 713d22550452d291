"""``clinalign evaluate`` end to end on tiny toy folders, and the slow run on the real PBC data."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from clinalign.cli import main
from clinalign.data.toy import generate, toy_class_map
from clinalign.data.transforms import save_png

from .conftest import REPO, SHARED_DATA, subprocess_env

FAST = [
    "--image_size",
    "16",
    "--epochs",
    "15",
    "--width",
    "8",
    "--batch_size",
    "16",
    "--bootstrap",
    "30",
    "--utility_steps",
    "20",
    "--utility_max_train",
    "120",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_cli")
    generate(root / "real", classes=4, per_class=50, size=16, seed=0)
    generate(root / "samples", classes=4, per_class=6, size=16, seed=5)
    rng = np.random.default_rng(0)
    for i, c in enumerate(toy_class_map(4).names * 6):
        save_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), root / "noise" / f"{c}_noise_{i:03d}.png")
    return root


def test_cli_evaluate_end_to_end_with_baseline_and_model_reuse(folders, tmp_path):
    out = tmp_path / "eval1"
    cmd = [
        sys.executable,
        "-m",
        "clinalign.cli",
        "evaluate",
        "--real",
        str(folders / "real"),
        "--samples",
        str(folders / "samples"),
        "--baseline",
        str(folders / "noise"),
        "--out",
        str(out),
        *FAST,
    ]
    res = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "samples: 24 images, plausible" in res.stdout and "samples - baseline" in res.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"samples", "baseline"}
    assert metrics["sets"]["samples"]["plausibility"]["rate"] > metrics["sets"]["baseline"]["plausibility"]["rate"]
    assert "plausibility.rate" in metrics["comparison"] and "utility" in metrics["sets"]["samples"]
    # Uniform noise is far sharper than any cell; toy samples are about as sharp as the real toy cells.
    sharp = {k: metrics["sets"][k]["sharpness"]["relative_to_real"] for k in ("samples", "baseline")}
    assert (
        sharp["baseline"] > 3 and 0.5 < sharp["samples"] < 2 and metrics["real"]["real_test"]["sharpness"]["median"] > 0
    )
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    assert "sharpness (median Laplacian variance)" in page
    model_dirs = [p for p in (out / "models").iterdir() if not p.name.startswith(".")]
    assert len(model_dirs) == 1

    # A second sample set against the same real data reuses the cached models (no retraining).
    out2 = tmp_path / "eval2"
    start = time.perf_counter()
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(folders / "real"),
                "--samples",
                str(folders / "noise"),
                "--out",
                str(out2),
                "--models_dir",
                str(out / "models"),
                "--utility",
                "False",
                *FAST,
            ]
        )
        == 0
    )
    assert time.perf_counter() - start < 20
    assert not (out2 / "models").exists()
    again = json.loads((out2 / "metrics.json").read_text())
    assert again["real"]["oracle"] == metrics["real"]["oracle"]
    assert "utility" not in again["sets"]["samples"] and "comparison" not in again


def test_cli_evaluate_reports_user_errors_in_one_line(folders, tmp_path, capsys):
    bad = tmp_path / "bad"
    save_png(np.zeros((16, 16, 3), np.uint8), bad / "blast_000.png")
    argv = [
        "evaluate",
        "--real",
        str(folders / "real"),
        "--samples",
        str(bad),
        "--out",
        str(tmp_path / "o"),
        "--models_dir",
        str(tmp_path / "m"),
        "--utility",
        "False",
        *FAST,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "blast_000.png" in err and "blast" in err
    assert (
        main(["evaluate", "--real", str(tmp_path / "nowhere"), "--samples", str(bad), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_and_expert_on_real_pbc_cells(tmp_path):
    """Real blood cells: the oracle learns them, held-out cells are plausible, noise is not."""
    pbc = SHARED_DATA / "pbc_64"
    if not pbc.exists():
        pytest.skip("../shared/data/pbc_64 (real blood-cell images) is not present")
    import torch

    from clinalign.evaluate.data import ImageSet
    from clinalign.evaluate.oracle import EvaluationModels, OracleConfig
    from clinalign.evaluate.run import MetricConfig, evaluate_samples, write_outputs
    from clinalign.evaluate.utility import UtilityConfig
    from clinalign.expert.simulator import ExpertConfig, ExpertSimulator

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_evaluate_models.py
    try:
        real = ImageSet.from_folder(pbc / "train", 32)
        test = ImageSet.from_folder(pbc / "test", 32)
        models = EvaluationModels.fit(real, test, OracleConfig(image_size=32, epochs=6, width=16, max_train=2400))
        assert models.info["test_balanced_accuracy"] >= 0.75
        expert = ExpertSimulator.fit(real, ExpertConfig(image_size=32, epochs=4, width=16, max_train=1600))
        from clinalign.evaluate.oracle import check_independent

        check_independent(expert.info, models.info)
        held = test.subset(np.arange(0, len(test), 8))  # ~430 unseen real cells as "samples"
        rng = np.random.default_rng(0)
        noise = ImageSet.from_arrays(rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), held.classes[:200])
        result = evaluate_samples(
            models,
            real,
            held,
            baseline=noise,
            test=test,
            config=MetricConfig(bootstrap=50, max_reference=4000, utility=UtilityConfig(steps=100, max_train=800)),
        )
        s, b = result.metrics["sets"]["samples"], result.metrics["sets"]["baseline"]
        assert s["plausibility"]["rate"] >= 0.7 and b["plausibility"]["rate"] <= 0.05
        assert s["memorisation"]["feature"]["near_copy_fraction"] <= 0.05
        assert expert.judge(held.images, held.classes)[0].mean() >= 0.6
        write_outputs(result, tmp_path)
        assert (tmp_path / "report.html").stat().st_size > 10_000
    finally:
        torch.set_num_threads(before)


def test_one_evaluator_judges_many_folders_against_one_real_reference(folders, tmp_path):
    from clinalign.evaluate.oracle import OracleConfig
    from clinalign.evaluate.run import Evaluator, MetricConfig, evaluate

    oracle = OracleConfig(image_size=16, epochs=15, width=8, batch_size=16)
    metrics = MetricConfig(bootstrap=30, utility=None)
    evaluator = Evaluator(folders / "real", models_dir=tmp_path / "models", oracle_config=oracle, metric_config=metrics)
    good, noise = evaluator.judge(folders / "samples"), evaluator.judge(folders / "noise")
    assert noise.reference is good.reference  # the real data is embedded once, not per folder
    assert good.samples.metrics["plausibility"]["rate"] > noise.samples.metrics["plausibility"]["rate"]
    # ... and judges exactly as a one-off evaluate() with the same models does
    alone = evaluate(
        folders / "real",
        folders / "noise",
        tmp_path / "alone",
        models_dir=tmp_path / "models",
        oracle_config=oracle,
        metric_config=metrics,
    )
    assert alone.samples.metrics["plausibility"] == noise.samples.metrics["plausibility"]
    assert alone.samples.metrics["fid"] == pytest.approx(noise.samples.metrics["fid"])
