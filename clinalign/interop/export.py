"""``clinalign export RUN OUT --format diffusers``: a run's model as a folder that diffusers loads alone.

Layout of OUT (written into a temporary sibling and renamed into place, so a failure leaves nothing)::

    model_index.json        names the pipeline (pipeline_clinalign.py) and its components
    pipeline_clinalign.py   ClinalignPipeline: class-conditional sampling (torch + diffusers only)
    unet/                   UNet2DModel.save_pretrained (EMA weights, class embedding included)
    scheduler/              DDPMScheduler config of the run's noise schedule, prediction and variance
    class_map.json          class names <-> ids, concept parents (clinalign's format)
    clinalign.json          where it came from: checkpoint, step, model and diffusion settings
    README.md               the model card (see card.py)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..data.classmap import CLASS_MAP_FILE
from ..errors import ConfigError
from ..training.checkpoint import Checkpoint, find_checkpoint
from ..utils.fileio import atomic_directory
from .card import model_card
from .diffusers_format import diffusers_unet, scheduler_config

FORMATS = ("diffusers",)
PIPELINE_FILE = Path(__file__).with_name("pipeline_clinalign.py")
PIPELINE_CLASS = "ClinalignPipeline"
SOURCE_FILE = "clinalign.json"


def check_out(out: Path) -> None:
    """OUT must be new or an empty folder: an export never overwrites or merges."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not empty; pass a new folder (the export never overwrites)")


def model_index(ck: Checkpoint) -> dict:
    import diffusers

    return {
        "_class_name": [PIPELINE_FILE.stem, PIPELINE_CLASS],
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "rescale_timesteps": bool(ck.diffusion.rescale_timesteps),
        "class_names": list(ck.class_map.names) if ck.model.class_cond else [],
        "guidance": ck.guidance,
        "guidance_scale": float(ck.meta.get("guidance_scale", 0.0)) if ck.guidance else 0.0,
    }


def source_record(ck: Checkpoint, ema: bool | str) -> dict:
    rate = (ck.ema_rates[0] if ema is True else str(ema)) if ema and ck.ema_rates else None
    return {
        "clinalign_version": __version__,
        "checkpoint": str(ck.path.resolve()),
        "step": ck.step,
        "weights": f"ema_{rate}" if rate else "model",
        "channels": ck.channels,
        "model": asdict(ck.model),
        "diffusion": asdict(ck.diffusion),
    }


def export_diffusers(run: str | Path, out: str | Path, metrics: str | Path | None = None, ema: bool = True) -> Path:
    """Write ``out`` from the latest checkpoint of ``run`` (or the checkpoint given); returns ``out``."""
    from diffusers import DDPMScheduler

    out = Path(out)
    check_out(out)
    ck = find_checkpoint(run)
    card = model_card(ck, metrics)  # every input is read before anything is written
    unet = diffusers_unet(ck, ema)
    scheduler = DDPMScheduler.from_config(scheduler_config(ck))
    with atomic_directory(out) as tmp:
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        shutil.copyfile(PIPELINE_FILE, tmp / PIPELINE_FILE.name)
        (tmp / "model_index.json").write_text(json.dumps(model_index(ck), indent=2) + "\n")
        ck.class_map.save(tmp / CLASS_MAP_FILE)
        (tmp / SOURCE_FILE).write_text(json.dumps(source_record(ck, ema), indent=2) + "\n")
        (tmp / "README.md").write_text(card)
    return out
