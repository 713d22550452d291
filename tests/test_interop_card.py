"""The model card of an export: every number from the run's records and its metrics.json."""

from __future__ import annotations

import json
import shutil

import pytest

from clinalign.cli import main
from clinalign.data.toy import generate
from clinalign.interop.card import EVAL_ROWS, lookup, reference_path
from clinalign.training.checkpoint import find_checkpoint

from .test_interop_export import run  # noqa: F401  (module fixture: a tiny trained run)

EVAL_FAST = ["--image_size", "16", "--epochs", "3", "--width", "8", "--batch_size", "16", "--bootstrap", "10"]
EVAL_FAST += ["--utility_steps", "10", "--utility_max_train", "60"]


@pytest.fixture(scope="module")
def loop_out(run, toy_dir, tmp_path_factory):  # noqa: F811
    """The loop's layout after one round: OUT/round_1/{samples,feedback,finetune} and OUT/evaluation/metrics.json."""
    out = tmp_path_factory.mktemp("loop")
    samples = out / "round_1" / "samples"
    assert main(["sample", "--checkpoint", str(run), "--num_samples", "8", "--steps", "3", "--out", str(samples)]) == 0
    ids = sorted(p.name for p in samples.glob("*.png"))
    verdicts = {name: k % 3 != 0 for k, name in enumerate(ids)}  # 5 plausible, 3 not
    for name, ok in verdicts.items():
        folder = out / "round_1" / "feedback" / name.split("_")[0] / ("align" if ok else "notalign")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(samples / name, folder / name)
    (samples / "rewards.csv").write_text("ID,rewards\n" + "".join(f"{n},{float(v)}\n" for n, v in verdicts.items()))
    argv = ["finetune", "--resume_checkpoint", str(run), "--data_pre_dir", str(toy_dir), "--data_mod_dir", str(samples)]
    assert main([*argv, "--run_dir", str(out / "round_1" / "finetune"), "--batch_size", "2", "--max_steps", "3"]) == 0
    real = out / "real"
    generate(real, classes=4, per_class=30, size=16, seed=2)
    judged = out / "judged"
    argv = ["sample", "--checkpoint", str(out / "round_1" / "finetune"), "--num_samples", "16", "--steps", "3"]
    assert main([*argv, "--out", str(judged)]) == 0
    argv = ["evaluate", "--real", str(real), "--samples", str(judged), "--baseline", str(samples)]
    assert main([*argv, "--out", str(out / "evaluation"), *EVAL_FAST]) == 0
    return out


@pytest.fixture(scope="module")
def card(loop_out, tmp_path_factory):
    dest = tmp_path_factory.mktemp("card") / "export"
    assert main(["export", str(loop_out / "round_1" / "finetune"), str(dest)]) == 0
    return (dest / "README.md").read_text()


def table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first markdown table after ``## heading``."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def test_evaluation_numbers_are_those_of_metrics_json(card, loop_out):
    metrics = json.loads((loop_out / "evaluation" / "metrics.json").read_text())
    assert f"From `{loop_out / 'evaluation' / 'metrics.json'}`" in card
    rows = {r[0]: r[1:] for r in table(card, "Evaluation")}
    names = list(metrics["sets"])
    assert names == ["samples", "baseline"]
    for label, path, ref, _ in EVAL_ROWS:
        for cell, name in zip(rows[label], names):
            value = lookup(metrics["sets"][name], path)
            assert cell == "n/a" if value is None else abs(float(cell) - value) <= 5e-4, (label, name)
        if ref:
            assert abs(float(rows[label][len(names)]) - lookup(metrics, reference_path(ref, names))) <= 5e-4
    assert "clinalign evaluate" in card


def test_classes_data_steps_and_feedback_come_from_the_run(card, run, loop_out):  # noqa: F811
    config = json.loads((run / "config.json").read_text())
    classes = table(card, "Classes")
    assert [(r[1], int(r[3])) for r in classes] == list(config["class_counts"].items())
    assert config["class_counts"] == {"eosinophil": 6, "lymphocyte": 6, "monocyte": 6, "neutrophil": 6}
    assert f"`{config['data_fingerprint']}`" in card and "- images: 24" in card
    stages = table(card, "Training")
    assert [(r[0], int(r[2]), r[3]) for r in stages] == [
        ("pretrain", 2, "pretrain"),
        ("finetune", 3, "reward-weighted"),
    ]
    assert find_checkpoint(loop_out / "round_1" / "finetune").step == 3
    feedback = table(card, "Expert feedback")
    assert [r[:5] for r in feedback] == [["1", "8", "8", "5", "3"]]
    assert "1 round(s); 8 expert verdicts" in card


def test_card_states_intended_use_and_how_to_load(card):
    assert card.startswith("---\nlibrary_name: diffusers\n")
    assert "Not for diagnosis" in card and "data augmentation" in card.replace(
        "augmenting training data", "data augmentation"
    )
    assert 'DiffusionPipeline.from_pretrained("THIS_FOLDER", trust_remote_code=True)' in card


def test_without_an_evaluation_the_card_says_how_to_make_one(run, tmp_path):  # noqa: F811
    assert main(["export", str(run), str(tmp_path / "e")]) == 0
    text = (tmp_path / "e" / "README.md").read_text()
    assert "No evaluation of this model was found" in text and "clinalign evaluate --real" in text
    assert "None: this model is pretrained only." in text


def test_a_given_metrics_file_must_exist(run, tmp_path):  # noqa: F811
    assert main(["export", str(run), str(tmp_path / "e"), "--metrics", str(tmp_path / "missing.json")]) == 2
    assert not (tmp_path / "e").exists()
