"""Checkpoints that carry their own configuration.

Layout of one checkpoint (a directory, renamed into place only when complete, so a crash never
leaves a half-written checkpoint that looks valid)::

    RUN/checkpoints/step_000500/
        meta.json            step, model + diffusion config, channels, class map, EMA rates
        model.safetensors    the trained weights (the same meta JSON in the safetensors header)
        ema_0.9999.safetensors
        state.pt             optimizer, timestep-sampler history, loss scaler, counters

Sampling, finetuning and resuming read the config from here, so flags never need repeating and
can never silently disagree with the weights.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..diffusion.factory import DiffusionConfig, diffusion_from_config
from ..errors import CheckpointError
from ..models.unet import ModelConfig
from ..utils.config import from_dict
from ..utils.fileio import atomic_directory

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# What a checkpoint that lacks a later model setting was built with.
LEGACY_MODEL_SETTINGS = {"mid_attention_norm": False}
STEP_DIR = re.compile(r"^step_(\d+)$")
META_KEY = "clinalign_meta"


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def model(self) -> ModelConfig:
        # Settings added after a checkpoint was written take the value that reproduces it.
        saved = {**LEGACY_MODEL_SETTINGS, **self.meta["model"]}
        return from_dict(ModelConfig, saved, f"{self.path}: model config")

    @property
    def diffusion(self) -> DiffusionConfig:
        return from_dict(DiffusionConfig, self.meta["diffusion"], f"{self.path}: diffusion config")

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def class_map(self):
        from ..data.classmap import ClassMap

        return ClassMap.from_dict(self.meta["class_map"])

    @property
    def guidance(self) -> dict[str, str]:
        """``{class: its rejected-samples class}`` of a guidance finetune; empty for any other run."""
        return dict(self.meta.get("guidance") or {})

    @property
    def sample_classes(self) -> list[str]:
        """The classes a user samples: every class but the rejected-samples classes guidance steers from."""
        negatives = set(self.guidance.values())
        return [name for name in self.class_map.names if name not in negatives]

    @property
    def ema_rates(self) -> list[str]:
        return list(self.meta.get("ema_rates", []))

    def weights(self, ema: bool | str = True, class_map=None) -> dict[str, torch.Tensor]:
        """Model weights; ``ema=True`` picks the first EMA rate, a string picks that rate.

        ``class_map``: a map that extends the checkpoint's (new concepts appended); the class
        embedding gains one row per new class, copied from its parent's row.
        """
        weights = self._load_weights(ema)
        if class_map is None or class_map.names == self.class_map.names:
            return weights
        from ..data.concepts import extension_parents
        from ..errors import DataError
        from ..models.unet import grow_class_rows

        try:
            rows = extension_parents(self.class_map, class_map)
        except DataError as exc:
            raise CheckpointError(f"{self.path}: {exc}") from None
        return grow_class_rows(weights, rows)

    def _load_weights(self, ema: bool | str) -> dict[str, torch.Tensor]:
        if ema and self.ema_rates:
            rate = self.ema_rates[0] if ema is True else str(ema)
            file = self.path / f"ema_{rate}.safetensors"
        else:
            file = self.path / "model.safetensors"
        if not file.exists():
            raise CheckpointError(
                f"{file}: missing from the checkpoint; it was not written completely, use an earlier checkpoint"
            )
        return load_file(str(file))

    def state(self) -> dict[str, Any]:
        file = self.path / "state.pt"
        if not file.exists():
            return {}
        return torch.load(file, map_location="cpu", weights_only=True)

    def build_model(self, ema: bool | str = True, device: str | torch.device = "cpu", class_map=None):
        """The denoiser; with ``class_map`` (the checkpoint's grown by concepts) it embeds every class."""
        from ..models.unet import build_denoiser

        classes = class_map if class_map is not None else self.class_map
        model = build_denoiser(self.model, self.channels, len(classes))
        load_weights(model, self.weights(ema, class_map), self.path)
        return model.to(device)

    def build_diffusion(self, timestep_respacing: str | None = None):
        """The run's diffusion; ``timestep_respacing`` None keeps the config's own respacing."""
        model = self.model
        return diffusion_from_config(
            self.diffusion,
            learn_sigma=model.learn_sigma,
            sigma_small=model.sigma_small,
            timestep_respacing=timestep_respacing,
        )


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model built from its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the checkpoint is from another "
            "architecture or version — retrain, or pass the checkpoint that matches these flags"
        )


def save_checkpoint(
    run_dir: Path,
    meta: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    ema_states: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
) -> Path:
    """Write a checkpoint directory atomically and durably (temp dir, fsync, rename)."""
    final = Path(run_dir) / "checkpoints" / f"step_{int(meta['step']):06d}"
    meta = {**meta, "format": FORMAT_VERSION, "ema_rates": list(ema_states)}
    header = {META_KEY: json.dumps(meta)}
    # The same step saved again (the final save after a periodic one) replaces the earlier copy.
    with atomic_directory(final, durable=True) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model_state.items()},
            str(tmp / "model.safetensors"),
            metadata=header,
        )
        for rate, ema in ema_states.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in ema.items()},
                str(tmp / f"ema_{rate}.safetensors"),
                metadata=header,
            )
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    log.info("saved checkpoint %s", final)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "meta.json").exists()
    ]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _read_meta_from_safetensors(file: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # corrupt or not a safetensors file
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc}); pass a clinalign checkpoint") from exc
    if META_KEY not in header:
        raise CheckpointError(f"{file}: has no clinalign config in its header; pass a checkpoint written by clinalign")
    return json.loads(header[META_KEY])


def find_checkpoint(path: str | Path) -> Checkpoint:
    """Resolve a run directory (its latest checkpoint), a checkpoint directory, or a weights file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such checkpoint; pass a run directory, a checkpoints/step_N "
            "directory or a .safetensors file written by clinalign"
        )
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: not a .safetensors file; pass the checkpoint directory or its model.safetensors"
            )
        meta = _read_meta_from_safetensors(path)
        return Checkpoint(path.parent, meta)
    if (path / "meta.json").exists():
        return Checkpoint(path, json.loads((path / "meta.json").read_text()))
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"{path}: holds no checkpoint (no checkpoints/step_N/meta.json); train first, "
            "or pass the run directory that holds one"
        )
    return Checkpoint(found[-1], json.loads((found[-1] / "meta.json").read_text()))


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    found = list_checkpoints(run_dir)
    if not found:
        return None
    return Checkpoint(found[-1], json.loads((found[-1] / "meta.json").read_text()))
