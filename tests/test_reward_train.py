"""Real training on toy cells with simulated expert verdicts (seeded, 32 px, well under a minute).

The feedback mix (clinalign.reward.toy) is built so that a model which ignores the declared class
cannot pass: 40 % of the implausible images are well-formed cells of another class.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from clinalign.data.folder import images_to_tensor
from clinalign.reward.metrics import auroc, expected_calibration_error
from clinalign.reward.model import HISTORY_FILE, REPORT_FILE, REWARD_FILE, RewardModel
from clinalign.reward.toy import toy_feedback, write_toy_reward_data
from clinalign.reward.train import TrainConfig, train_reward

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_toy")
    dirs = write_toy_reward_data(
        root / "data",
        classes=4,
        real_per_class=60,
        feedback_per_class=60,
        val_real_per_class=20,
        val_feedback_per_class=40,
        size=SIZE,
        seed=0,
    )
    cfg = TrainConfig(**dirs, save_dir=root / "ckpt", epochs=40, batch_size=64, seed=0)
    start = time.perf_counter()
    result = train_reward(cfg)
    result.seconds = time.perf_counter() - start
    test = toy_feedback(classes=4, per_class=50, size=SIZE, seed=100)  # held out: new seed, never seen
    return result, test


def test_reward_model_learns_clinical_plausibility(trained):
    result, test = trained
    p = result.model.score_names(images_to_tensor(test.images), test.declared).numpy()
    auc = auroc(p, test.plausible)
    ece = expected_calibration_error(p, test.plausible)
    print(
        f"held-out synthetic feedback: AUROC {auc:.4f}, ECE {ece:.4f}, T {result.model.temperature:.3f}, "
        f"trained in {result.seconds:.1f}s, {len(result.history)} epochs"
    )
    assert auc >= 0.9
    assert ece <= 0.1
    # Every kind of implausibility is recognised, not just the easy ones.
    for kind in set(test.kinds) - {"plausible"}:
        mask = np.array([k == kind for k in test.kinds])
        assert p[mask].mean() < p[test.plausible == 1].mean() - 0.3, kind


def test_reward_depends_on_declared_class(trained):
    result, test = trained
    model = result.model
    x = images_to_tensor(test.images)
    p = model.score_names(x, test.declared).numpy()
    shuffled = [test.declared[i] for i in np.random.default_rng(0).permutation(len(test))]
    p_shuffled = model.score_names(x, shuffled).numpy()
    auc, auc_shuffled = auroc(p, test.plausible), auroc(p_shuffled, test.plausible)
    assert auc_shuffled < 0.8 and auc - auc_shuffled > 0.2, (auc, auc_shuffled)

    # The same plausible image declared as its class vs as another class: nearly always separated.
    good = test.plausible == 1
    names = model.class_map.names
    wrong = [names[(names.index(c) + 1) % len(names)] for c in np.asarray(test.declared)[good]]
    right_p = model.score_names(x[good], list(np.asarray(test.declared)[good])).numpy()
    wrong_p = model.score_names(x[good], wrong).numpy()
    assert auroc(np.r_[right_p, wrong_p], np.r_[np.ones(len(right_p)), np.zeros(len(wrong_p))]) >= 0.95

    # A class-blind score (the best any class gets) must fail the benchmark: the fixture has teeth.
    # On well-formed cells of the wrong class it is little better than a coin.
    with torch.inference_mode():
        net = model.inference_net()
        blind = net.head_all(net.features(x)).max(dim=1).values.numpy()
    assert auroc(blind, test.plausible) < 0.9
    wrong_or_fine = np.array([k in ("plausible", "wrong_class") for k in test.kinds])
    assert auroc(blind[wrong_or_fine], test.plausible[wrong_or_fine]) < 0.7
    assert auroc(p[wrong_or_fine], test.plausible[wrong_or_fine]) >= 0.95


def test_checkpoint_dir_round_trip(trained):
    result, test = trained
    ckpt = result.save_dir
    assert {p.name for p in ckpt.iterdir()} >= {REWARD_FILE, REPORT_FILE, HISTORY_FILE}
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]  # no temp files left
    loaded = RewardModel.load(ckpt)
    assert loaded.class_map.names == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert loaded.image_size == SIZE and loaded.channels == 3
    assert loaded.temperature == pytest.approx(result.model.temperature)
    assert loaded.meta["width"] == result.model.meta["width"]
    x = images_to_tensor(test.images[:50])
    torch.testing.assert_close(
        loaded.score_names(x, test.declared[:50]), result.model.score_names(x, test.declared[:50]), atol=1e-5, rtol=0
    )
    # Uncalibrated and calibrated probabilities differ exactly by the temperature.
    z = loaded.logits(x, loaded.class_indices(test.declared[:50]))
    torch.testing.assert_close(loaded.score_names(x, test.declared[:50]), torch.sigmoid(z / loaded.temperature))


def test_report_and_history(trained):
    result, _ = trained
    report = json.loads((result.save_dir / REPORT_FILE).read_text())
    history = [json.loads(line) for line in (result.save_dir / HISTORY_FILE).read_text().splitlines()]
    assert len(history) == report["epochs_run"] == len(result.history)
    assert report["selection_metric"] == "val_auroc_synthetic"
    assert report["calibrated_on"] == "validation synthetic feedback"
    val = report["validation"]
    for group in ("overall", "real", "synthetic"):
        assert set(val[group]) >= {"auroc", "accuracy", "balanced_accuracy", "ece", "nll", "n"}
    assert set(val["per_class"]) == {"eosinophil", "lymphocyte", "monocyte", "neutrophil"}
    assert val["synthetic"]["n"] == 160
    assert val["real"]["n"] == 160  # 80 real images, each with its class and with a wrong one
    # The report's best epoch is the one the history marks best last.
    assert report["best_epoch"] == max(h["epoch"] for h in history if h["best"])
    # Calibration on validation lowers (or keeps) its NLL.
    assert val["synthetic"]["nll"] <= report["validation_uncalibrated"]["synthetic"]["nll"] + 1e-9
