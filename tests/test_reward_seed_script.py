"""The seed's entry point, run as the seed runs it: ``cd Classifier; python train_scoring_function.py ...``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clinalign.reward.toy import toy_feedback, write_samples, write_toy_reward_data

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "Classifier" / "train_scoring_function.py"


def bare_env() -> dict[str, str]:
    """No PYTHONPATH: the script must find the package from its own location."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_seed_script_end_to_end(tmp_path):
    d = write_toy_reward_data(
        tmp_path / "data",
        classes=2,
        real_per_class=8,
        feedback_per_class=8,
        val_real_per_class=4,
        val_feedback_per_class=6,
        size=16,
        seed=0,
    )
    ckpt = tmp_path / "checkpoints"
    cmd = [
        sys.executable,
        "train_scoring_function.py",
        "--train_dir",
        str(d["train_dir"]),
        "--train_anno_dir",
        str(d["train_anno_dir"]),
        "--val_dir",
        str(d["val_dir"]),
        "--val_anno_dir",
        str(d["val_anno_dir"]),
        "--save_checkpoints_dir",
        str(ckpt),
        # the rest of the seed's flags, with the seed's spellings and value formats
        "--ratio",
        "1.0",
        "--input_model",
        "ResNeXt50",
        "--pretrained",
        "True",
        "--init_lr",
        "0.002",
        "--weight_decay",
        "0.0005",
        "--gamma",
        "0.1",
        "--epochs",
        "2.0",
        "--batch_size",
        "16",
        "--lr_decay_every_x_epochs",
        "5",
    ]
    run = subprocess.run(cmd, cwd=REPO / "Classifier", env=bare_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.rstrip().endswith("Done")
    assert "SYNTHETIC FEEDBACK" in run.stdout
    assert "no weights are downloaded" in run.stderr  # --pretrained True is honoured honestly
    assert {p.name for p in ckpt.iterdir()} == {"reward.safetensors", "report.json", "history.jsonl"}
    report = json.loads((ckpt / "report.json").read_text())
    assert report["epochs_run"] == 2 and report["config"]["lr"] == 0.002

    # What the seed script saved is what `reward score --checkpoint` takes.
    samples = write_samples(toy_feedback(classes=2, per_class=3, size=16, seed=9), tmp_path / "samples")
    out = tmp_path / "rewards.csv"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "clinalign.cli",
            "reward",
            "score",
            "--checkpoint",
            str(ckpt),
            "--images",
            str(samples),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = out.read_text().split("\n")
    assert lines[0] == "ID,rewards" and lines[-1] == "" and len(lines) == 2 + 6


def test_seed_script_runs_from_the_repo_root_and_reports_errors(tmp_path):
    run = subprocess.run(
        [sys.executable, "Classifier/train_scoring_function.py", "--help"],
        cwd=REPO,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "--save_checkpoints_dir" in run.stdout and "--train_anno_dir" in run.stdout
    run = subprocess.run(
        [
            sys.executable,
            "Classifier/train_scoring_function.py",
            "--train_dir",
            str(tmp_path / "x"),
            "--save_checkpoints_dir",
            str(tmp_path / "ck"),
        ],
        cwd=REPO,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert f"{tmp_path / 'x'}: folder does not exist" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "ck" / "reward.safetensors").exists()
