"""Integration on real blood cells (PBC, 64 px, seed naming): skipped when ../shared/data is absent.

No expert feedback exists for real data, so this checks the paper's pseudo-label half: a real
cell declared as its own class vs as a wrong class, on held-out cells, at 32 px.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from clinalign.reward.train import TrainConfig, train_reward

PBC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc_64"


pytestmark = pytest.mark.usefixtures("one_thread")


def imagenet_layout(src: Path, dest: Path, per_class: int, seed: int) -> Path:
    """Symlink a per-class random subsample of ``CLASS_*.jpg`` into ``dest/CLASS/``."""
    files = sorted(src.glob("*.jpg"))
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(f.name.split("_")[0], []).append(f)
    rng = np.random.default_rng(seed)
    for cls, paths in by_class.items():
        (dest / cls).mkdir(parents=True)
        for i in rng.choice(len(paths), size=min(per_class, len(paths)), replace=False):
            (dest / cls / paths[i].name).symlink_to(paths[i])
    return dest


@pytest.mark.slow
def test_real_vs_wrong_class_on_pbc(tmp_path):
    if not (PBC / "train").is_dir() or not (PBC / "val").is_dir():
        pytest.skip(f"{PBC} (real blood-cell images) is not present")
    train = imagenet_layout(PBC / "train", tmp_path / "train", per_class=250, seed=0)
    val = imagenet_layout(PBC / "val", tmp_path / "val", per_class=50, seed=1)
    start = time.perf_counter()
    res = train_reward(
        TrainConfig(
            train_dir=train, val_dir=val, save_dir=tmp_path / "ck", image_size=32, epochs=25, batch_size=64, seed=0
        )
    )
    seconds = time.perf_counter() - start
    overall = res.report["validation"]["overall"]
    print(
        f"PBC real vs wrong class at 32 px: AUROC {overall['auroc']:.4f}, ECE {overall['ece']:.4f}, "
        f"{res.report['epochs_run']} epochs in {seconds:.0f}s"
    )
    assert res.report["selection_metric"] == "val_auroc_overall"  # no feedback: falls back
    assert len(res.model.class_map) == 8
    assert overall["auroc"] >= 0.9
