"""Build a diffusion from the seed's flags (improved-diffusion's ``create_gaussian_diffusion``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..utils.config import option
from .gaussian import LossType, ModelMeanType, ModelVarType
from .respace import SpacedDiffusion, space_timesteps
from .schedules import get_named_beta_schedule

__all__ = ["DiffusionConfig", "create_diffusion", "diffusion_from_config"]

MEAN_TYPES = {"eps": ModelMeanType.EPSILON, "x0": ModelMeanType.START_X, "v": ModelMeanType.VELOCITY}


@dataclass
class DiffusionConfig:
    """The diffusion process: improved-diffusion's diffusion flags, names and defaults (stored in checkpoints)."""

    diffusion_steps: int = option(1000, "number of forward-process steps T")
    noise_schedule: str = option("linear", "beta schedule", choices=("linear", "cosine"))
    timestep_respacing: str = option("", "sample with fewer steps, e.g. '250' or 'ddim50'")
    use_kl: bool = option(False, "train on the variational bound only (L_vlb)")
    predict_xstart: bool = option(False, "predict x_0 instead of the noise")
    # clinalign additions; a checkpoint without them keeps the objective it was trained with
    prediction: str = option(
        "",
        "what the model predicts: eps, x0 or v (Salimans & Ho 2022); '' = x0 if --predict_xstart else eps [clinalign]",
        choices=("", "eps", "x0", "v"),
    )
    snr_gamma: float = option(0.0, "min-SNR-gamma loss weighting (Hang et al. 2023; 5 is theirs); 0 = off [clinalign]")
    rescale_timesteps: bool = option(True, "feed timesteps to the model scaled to [0, 1000)")
    rescale_learned_sigmas: bool = option(True, "hybrid loss (L_simple + lambda L_vlb) when learn_sigma")


def diffusion_from_config(
    cfg: DiffusionConfig, *, learn_sigma: bool, sigma_small: bool, timestep_respacing: str | None = None
) -> SpacedDiffusion:
    """The one place a config becomes a diffusion (training: respacing ""; sampling: the config's or given)."""
    return create_diffusion(
        steps=cfg.diffusion_steps,
        learn_sigma=learn_sigma,
        sigma_small=sigma_small,
        noise_schedule=cfg.noise_schedule,
        use_kl=cfg.use_kl,
        predict_xstart=cfg.predict_xstart,
        rescale_timesteps=cfg.rescale_timesteps,
        rescale_learned_sigmas=cfg.rescale_learned_sigmas,
        prediction=cfg.prediction,
        snr_gamma=cfg.snr_gamma,
        timestep_respacing=cfg.timestep_respacing if timestep_respacing is None else timestep_respacing,
    )


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
    prediction: str = "",
    snr_gamma: float = 0.0,
) -> SpacedDiffusion:
    """A SpacedDiffusion over ``steps`` base steps, configured exactly as improved-diffusion.

    * loss: RESCALED_KL if ``use_kl``, else RESCALED_MSE if ``rescale_learned_sigmas``, else MSE;
    * mean: ``prediction`` ("eps", "x0", "v"), else x_0 if ``predict_xstart``, else ε;
    * ``snr_gamma`` > 0: min-SNR-γ weighting of the MSE term (Hang et al. 2023);
    * variance: LEARNED_RANGE if ``learn_sigma``, else FIXED_SMALL if ``sigma_small``, else FIXED_LARGE;
    * ``timestep_respacing`` ("" = all steps) as in :func:`space_timesteps`.
    """
    if prediction and predict_xstart and prediction != "x0":
        raise ConfigError(f"--prediction {prediction} contradicts --predict_xstart True; give one of them")
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
        model_mean_type=MEAN_TYPES[prediction or ("x0" if predict_xstart else "eps")],
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
        snr_gamma=snr_gamma,
    )
