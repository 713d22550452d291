"""The diffusion process: schedules, forward noising, losses, timestep samplers, respacing and
samplers, with the semantics of openai/improved-diffusion (Nichol & Dhariwal 2021)."""

from .factory import DiffusionConfig, create_diffusion, diffusion_from_config
from .gaussian import GaussianDiffusion, LossType, ModelMeanType, ModelVarType
from .losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .respace import SpacedDiffusion, base_betas, respace, space_timesteps
from .samplers import SAMPLERS, dpm_solver_pp_sample_loop, sample_images
from .schedules import betas_for_alpha_bar, get_named_beta_schedule
from .timestep_samplers import (
    LossAwareSampler,
    LossSecondMomentResampler,
    ScheduleSampler,
    UniformSampler,
    create_named_schedule_sampler,
)

__all__ = [
    "DiffusionConfig",
    "GaussianDiffusion",
    "LossAwareSampler",
    "LossSecondMomentResampler",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "SAMPLERS",
    "ScheduleSampler",
    "SpacedDiffusion",
    "UniformSampler",
    "approx_standard_normal_cdf",
    "base_betas",
    "betas_for_alpha_bar",
    "create_diffusion",
    "create_named_schedule_sampler",
    "diffusion_from_config",
    "discretized_gaussian_log_likelihood",
    "dpm_solver_pp_sample_loop",
    "get_named_beta_schedule",
    "mean_flat",
    "normal_kl",
    "respace",
    "sample_images",
    "space_timesteps",
]
