"""Where a checkpoint came from: its stages (pretraining, each finetune), their data and verdicts.

A finetune's checkpoints record ``init_checkpoint`` (the checkpoint it started from); following it
back reaches the pretraining run. Each stage's run folder holds its ``config.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClinalignError
from ..training.checkpoint import Checkpoint, find_checkpoint

log = logging.getLogger(__name__)

MAX_STAGES = 100  # a loop of init_checkpoint links would otherwise never end


@dataclass
class Stage:
    ck: Checkpoint
    run: Path | None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return self.ck.step

    @property
    def objective(self) -> str:
        return str(self.ck.meta.get("objective") or ("reward-weighted" if self.is_finetune else "pretrain"))

    @property
    def is_finetune(self) -> bool:
        return bool(self.ck.meta.get("init_checkpoint"))

    @property
    def label(self) -> str:
        return "finetune" if self.is_finetune else "pretrain"

    def details(self) -> str:
        c, train = self.config, self.config.get("train", {})
        if self.is_finetune:
            return (
                f"beta {c.get('beta', 'n/a')}, rewards {c.get('reward_transform', 'n/a')}, "
                f"{c.get('n_real', 'n/a')} real + {c.get('n_synthetic', 'n/a')} synthetic images"
            )
        start = f", started from `{self.ck.meta['init_from']}`" if self.ck.meta.get("init_from") else ""
        return f"timesteps {train.get('schedule_sampler', 'n/a')}, EMA {train.get('ema_rate', 'n/a')}{start}"


def run_of(ck: Checkpoint) -> Path | None:
    """RUN for RUN/checkpoints/step_N, else None."""
    return ck.path.parent.parent if ck.path.parent.name == "checkpoints" else None


def stage_of(ck: Checkpoint) -> Stage:
    run = run_of(ck)
    config = {}
    if run is not None and (run / "config.json").is_file():
        try:
            config = json.loads((run / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("%s: unreadable (%s); the card leaves its details out", run / "config.json", exc)
    return Stage(ck, run, config)


def lineage(ck: Checkpoint) -> tuple[list[Stage], str | None]:
    """Stages oldest first, ending with ``ck``'s; and a note when the chain breaks before a pretraining."""
    stages = [stage_of(ck)]
    while stages[0].is_finetune and len(stages) < MAX_STAGES:
        init = stages[0].ck.meta["init_checkpoint"]
        try:
            stages.insert(0, stage_of(find_checkpoint(init)))
        except ClinalignError:
            return (
                stages,
                f"The first finetune started from `{init}`, which is no longer on disk: earlier stages unknown.",
            )
    return stages, None


def training_data(first: Stage, ck: Checkpoint) -> dict[str, Any]:
    """Folder, image count, class counts and fingerprint of the pretraining data, as recorded."""
    c = first.config
    train = c.get("train", {})
    data = {
        "data_dir": train.get("data_dir") or c.get("data_pre_dir"),
        "n_images": c.get("n_images", c.get("n_real", "not recorded")),
        "class_counts": c.get("class_counts"),
        "fingerprint": c.get("data_fingerprint"),
    }
    if first.is_finetune:
        data["note"] = "the pretraining run is not on disk: these are the first finetune's real images"
    elif data["fingerprint"] is None:
        data.update(fingerprint_now(data["data_dir"], ck))
    return data


def fingerprint_now(data_dir: str | None, ck: Checkpoint) -> dict[str, Any]:
    """For runs that did not record it: the fingerprint of the data folder as it is now (if it is there)."""
    from ..data.folder import ImageFolderDataset
    from ..training.pretrain import class_counts, data_fingerprint

    if not data_dir or not Path(data_dir).is_dir():
        return {"note": "the run did not record a fingerprint and its data folder is not on disk"}
    try:
        dataset = ImageFolderDataset(
            data_dir, ck.model.image_size, class_cond=ck.model.class_cond, rgb=ck.channels == 3
        )
    except ClinalignError as exc:
        return {"note": f"the run did not record a fingerprint and its data folder cannot be read ({exc})"}
    return {
        "fingerprint": data_fingerprint(dataset),
        "class_counts": class_counts(dataset),
        "note": "fingerprint and counts computed at export from the data folder as it is now (the run did not "
        "record them)",
    }


def verdict_counts(stage: Stage) -> dict[str, Any]:
    """Expert verdicts of a finetune: the ``feedback`` folder beside its samples (the loop's layout)."""
    mod = stage.config.get("data_mod_dir")
    folder = Path(mod).parent / "feedback" if mod else None
    if folder is None or not folder.is_dir():
        return {"verdicts": None, "plausible": None, "implausible": None, "folder": folder or "not recorded"}
    plausible = sum(1 for p in folder.rglob("align/*") if p.is_file())
    implausible = sum(1 for p in folder.rglob("notalign/*") if p.is_file())
    return {"verdicts": plausible + implausible, "plausible": plausible, "implausible": implausible, "folder": folder}
