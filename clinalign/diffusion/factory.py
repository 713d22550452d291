"""Build a diffusion from the seed's flags (improved-diffusion's ``create_gaussian_diffusion``)."""

from __future__ import annotations

from .gaussian import LossType, ModelMeanType, ModelVarType
from .respace import SpacedDiffusion, space_timesteps
from .schedules import get_named_beta_schedule

__all__ = ["create_diffusion"]


def create_diffusion(
    *,
    steps: int = 1000,
    learn_sigma: bool = False,
    sigma_small: bool = False,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    predict_xstart: bool = False,
    rescale_timesteps: bool = False,
    rescale_learned_sigmas: bool = True,
    timestep_respacing: str = "",
) -> SpacedDiffusion:
    """A SpacedDiffusion over ``steps`` base steps, configured exactly as improved-diffusion.

    * loss: RESCALED_KL if ``use_kl``, else RESCALED_MSE if ``rescale_learned_sigmas``, else MSE;
    * mean: x_0 if ``predict_xstart``, else ε;
    * variance: LEARNED_RANGE if ``learn_sigma``, else FIXED_SMALL if ``sigma_small``, else FIXED_LARGE;
    * ``timestep_respacing`` ("" = all steps) as in :func:`space_timesteps`.
    """
    betas = get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        betas=betas,
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )
