"""The pretraining curve: quality and memorisation against training steps, to pick a plateau base.

Feedback is meant for a model whose remaining failures are the ones more of the same real data
does not fix. So the base is taken where continued training stops helping: every checkpoint of a
pretraining run is sampled with the same seeds and judged (plausibility and its parts, FID, the
clinical checklist, memorisation of the generator's training set), and the plateau is the first
checkpoint within ``tolerance`` of the best plausibility and within ``fid_tolerance`` of the best FID.
With a small training set the curve also shows when the model starts to copy it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..evaluate.run import Evaluator, json_safe, lookup
from ..sampling.sample import SampleConfig, sample_folder
from ..training.checkpoint import find_checkpoint, list_checkpoints
from ..utils.fileio import write_json_atomic

log = logging.getLogger(__name__)

CURVE_METRICS = {
    "plausibility": ("plausibility", "rate"),
    "class_consistent": ("plausibility", "oracle_rate"),
    "on_manifold": ("plausibility", "manifold_rate"),
    "checklist": ("checklist", "all"),
    "fid": ("fid",),
    "precision": ("prdc", "precision"),
    "recall": ("prdc", "recall"),
    "near_copy_feature": ("memorisation", "feature", "near_copy_fraction"),
    "near_copy_pixel": ("memorisation", "pixel", "near_copy_fraction"),
}


def pretraining_curve(
    run: str | Path, evaluator: Evaluator, out: str | Path, sample: SampleConfig, every: int = 0, progress: bool = False
) -> list[dict[str, Any]]:
    """One row per checkpoint of ``run`` (those at multiples of ``every``, or all): its judged metrics."""
    out = Path(out)
    rows = []
    for path in list_checkpoints(run):
        ck = find_checkpoint(path)
        if every and ck.step % every:
            continue
        folder = out / "samples" / f"step_{ck.step:06d}"
        sample_folder(ck, folder, sample, progress=progress)
        metrics = evaluator.judge(folder).samples.metrics
        row = {"step": ck.step, **{k: lookup(metrics, p) for k, p in CURVE_METRICS.items()}}
        row["per_class_plausibility"] = {c: v["rate"] for c, v in metrics["plausibility"]["per_class"].items()}
        rows.append(row)
        log.info("step %d: %s", ck.step, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)})
        write_json_atomic(out / "curve.json", json_safe({"rows": rows}))
    return rows


def plateau_step(rows: list[dict[str, Any]], tolerance: float = 0.02, fid_tolerance: float = 0.1) -> int:
    """The first step within ``tolerance`` of the best plausibility and ``fid_tolerance`` (relative) of the best FID."""
    if not rows:
        raise ValueError("no checkpoints on the curve")
    best_p = max(r["plausibility"] for r in rows)
    best_fid = min(r["fid"] for r in rows)
    for r in rows:
        if r["plausibility"] >= best_p - tolerance and r["fid"] <= best_fid * (1 + fid_tolerance):
            return int(r["step"])
    return int(rows[-1]["step"])


def plot_curve(rows: list[dict[str, Any]], path: str | Path, plateau: int | None = None) -> Path:
    """Plausibility (and its parts), checklist, FID and near-copy share against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("plausibility", "class_consistent", "on_manifold", "checklist"):
        axes[0].plot(steps, [r[key] for r in rows], marker="o", ms=3, label=key.replace("_", "-"))
    axes[0].set_title("plausibility (oracle on pool O)")
    axes[1].plot(steps, [r["fid"] for r in rows], marker="o", ms=3, color="C4")
    axes[1].set_title("FID (domain features, vs O)")
    axes[2].plot(steps, [r["near_copy_feature"] for r in rows], marker="o", ms=3, label="features")
    axes[2].plot(steps, [r["near_copy_pixel"] for r in rows], marker="o", ms=3, label="pixels")
    axes[2].set_title("near copies of the training set G")
    for ax in axes:
        ax.set_xlabel("training step")
        if plateau is not None:
            ax.axvline(plateau, color="grey", ls="--", lw=1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
