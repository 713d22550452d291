"""A clinalign checkpoint as diffusers components: the UNet with its weights, and the scheduler config.

The scheduler config reproduces the run's process: the betas (the named diffusers schedule when
it gives the same float32 betas, else the run's own list as ``trained_betas``), the prediction
type (ε or x_0), the variance (learned range, fixed small, fixed large), x_0 clipping, and the
timestep spacing of clinalign's DDIM ("ddimN": every T/N-th step from 0, diffusers' "leading").
"""

from __future__ import annotations

import numpy as np
import torch

from ..diffusion.gaussian import ModelMeanType, ModelVarType
from ..diffusion.respace import base_betas
from ..errors import CheckpointError
from ..training.checkpoint import Checkpoint

UNET_PREFIX = "unet."

VARIANCE_TYPES = {
    ModelVarType.LEARNED_RANGE: "learned_range",
    ModelVarType.FIXED_SMALL: "fixed_small",
    ModelVarType.FIXED_LARGE: "fixed_large",
}


def diffusers_unet(ck: Checkpoint, ema: bool | str = True):
    """The checkpoint's ``UNet2DModel`` (EMA weights by default), in eval mode."""
    model = ck.build_model(ema=ema)
    return model.unet.eval()


def named_schedule(noise_schedule: str, steps: int) -> dict | None:
    """diffusers' name (and range) for one of clinalign's schedules, or None when there is none."""
    if noise_schedule == "cosine":
        return {"beta_schedule": "squaredcos_cap_v2"}
    if noise_schedule == "linear":
        scale = 1000.0 / steps
        return {"beta_schedule": "linear", "beta_start": scale * 1e-4, "beta_end": scale * 0.02}
    return None


def _diffusers_betas(config: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).betas


def schedule_entries(ck: Checkpoint) -> dict:
    """Schedule keys of the scheduler config: named when diffusers' float32 betas equal the run's, else a list."""
    diffusion = ck.build_diffusion(timestep_respacing="")
    betas = np.asarray(base_betas(diffusion), dtype=np.float64)
    steps = len(betas)
    named = named_schedule(ck.diffusion.noise_schedule, steps)
    if named is not None:
        theirs = _diffusers_betas({"num_train_timesteps": steps, **named})
        if torch.equal(theirs, torch.tensor(betas, dtype=torch.float32)):
            return named
    return {"beta_schedule": "linear", "trained_betas": [float(b) for b in betas]}


PREDICTION_TYPES = {
    ModelMeanType.EPSILON: "epsilon",
    ModelMeanType.START_X: "sample",
    ModelMeanType.VELOCITY: "v_prediction",
}


def scheduler_config(ck: Checkpoint, clip_sample: bool = True) -> dict:
    """A ``DDPMScheduler`` config (also valid for DDIM and DPM-Solver via ``from_config``) of the run's process."""
    diffusion = ck.build_diffusion(timestep_respacing="")
    if diffusion.model_mean_type not in PREDICTION_TYPES:
        raise CheckpointError(
            f"{ck.path}: a model predicting x_(t-1) has no diffusers scheduler; export ε, x_0 or v models"
        )
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": int(diffusion.num_timesteps),
        **schedule_entries(ck),
        "prediction_type": PREDICTION_TYPES[diffusion.model_mean_type],
        "variance_type": VARIANCE_TYPES[diffusion.model_var_type],
        "clip_sample": bool(clip_sample),
        "clip_sample_range": 1.0,
        "thresholding": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }
