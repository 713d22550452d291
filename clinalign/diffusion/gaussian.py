"""The Gaussian diffusion process: forward noising, model posterior, losses and samplers.

Same semantics as openai/improved-diffusion's ``GaussianDiffusion``, written one method per
equation. Timestep indices t run from 0 to T−1; index t is the paper's step t+1, so t = 0 is
the last denoising step (the one scored by the discretized decoder).

References:
    [DDPM]  Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models".
    [iDDPM] Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models".
    [DDIM]  Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models".

Numerics: the schedule arrays are float64 numpy; they are extracted into float32 tensors on
the timesteps' device (float64 when the data is float64). Model outputs are cast to that
working dtype before any loss is computed, so a bf16 model still gets float32 losses.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl

__all__ = [
    "GaussianDiffusion",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
]

Model = Callable[..., torch.Tensor]


class ModelMeanType(enum.Enum):
    """What the model's first C output channels predict."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # ε
    VELOCITY = enum.auto()  # v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022)


class ModelVarType(enum.Enum):
    """How the variance Σ_θ(x_t, t) of p(x_{t−1} | x_t) is obtained."""

    LEARNED = enum.auto()  # last C channels are log Σ directly
    FIXED_SMALL = enum.auto()  # Σ = β̃_t (posterior variance)
    FIXED_LARGE = enum.auto()  # Σ = β_t
    LEARNED_RANGE = enum.auto()  # last C channels interpolate log β̃_t .. log β_t (iDDPM eq. 15)


class LossType(enum.Enum):
    MSE = enum.auto()  # L_simple (+ unscaled L_vlb for the variance when it is learned)
    RESCALED_MSE = enum.auto()  # L_simple + (T/1000)·L_vlb for the variance
    KL = enum.auto()  # L_vlb, one term per sample
    RESCALED_KL = enum.auto()  # T·L_t, an unbiased estimate of the whole L_vlb

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype (bf16, fp16, fp32, ints) computes in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _extract_into_tensor(
    arr: np.ndarray,
    timesteps: torch.Tensor,
    broadcast_shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """arr[timesteps] as a tensor broadcast to ``broadcast_shape`` ([N, 1, 1, ...] expanded).

    The float64 array is cast on the CPU before it moves, so devices without float64 work.
    """
    res = torch.from_numpy(np.asarray(arr)).to(dtype).to(timesteps.device)[timesteps.long()]
    while res.ndim < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


def _model_device(model: Any) -> torch.device | None:
    """The device of a module's first parameter, or None for a plain function."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return None


def randn(
    shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard normal noise on ``device``, drawn from ``generator`` when one is given.

    The noise is drawn on the generator's own device and then moved, so a CPU generator gives
    the same numbers whichever device the model is on.
    """
    if generator is None:
        return torch.randn(*shape, device=device, dtype=dtype)
    return torch.randn(*shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def _resolve_device(model: Any, noise: torch.Tensor | None, device) -> torch.device:
    if noise is not None:
        return noise.device
    if device is not None:
        return torch.device(device)
    return _model_device(model) or torch.device("cpu")


class GaussianDiffusion:
    """A discrete-time Gaussian diffusion process with T steps, given by its betas.

    :param betas: 1-D array of β for t = 0 .. T−1 (each in (0, 1]).
    :param model_mean_type: what the model predicts (ε, x_0 or x_{t−1}).
    :param model_var_type: fixed or learned variance.
    :param loss_type: the training objective.
    :param rescale_timesteps: pass t·1000/T (float) to the model instead of the integer t, so
        that the model always sees timesteps on the scale of the 1000-step paper.
    """

    def __init__(
        self,
        *,
        betas,
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
        rescale_timesteps: bool = False,
        snr_gamma: float = 0.0,
    ) -> None:
        self.model_mean_type = model_mean_type
        self.snr_gamma = float(snr_gamma)
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        # [DDPM] eq. 4 / [iDDPM] eqs. 7–8: α_t = 1 − β_t, ᾱ_t = ∏_{s ≤ t} α_s.
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        # q(x_t | x_0) and its inversions.
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # [iDDPM] eqs. 10–12: q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃ is 0 at t = 0, so its log is clipped to the value at t = 1 (as in improved-diffusion;
        # with a single step there is no t = 1 and β_0 is used).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ----------------------------------------------------------------------------------------
    # helpers

    def _extract(self, arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _extract_into_tensor(arr, t, like.shape, _work_dtype(like))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the model is called with: t, or t·1000/T when ``rescale_timesteps``."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:  # improved-diffusion's name
        return self.model_timesteps(t)

    def _call_model(self, model: Model, x: torch.Tensor, t: torch.Tensor, model_kwargs) -> torch.Tensor:
        """model(x, t', **kwargs) with t' from :meth:`model_timesteps`, cast to the working dtype."""
        out = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        return out.to(_work_dtype(x))

    # ----------------------------------------------------------------------------------------
    # forward process

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I); [DDPM] eq. 4."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = self._extract(1.0 - self.alphas_cumprod, t, x_start)
        log_variance = self._extract(self.log_one_minus_alphas_cumprod, t, x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x_0); [iDDPM] eq. 9."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean μ̃_t, variance β̃_t and clipped log β̃_t of q(x_{t−1} | x_t, x_0); [DDPM] eqs. 6–7.

        μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t,
        β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t.
        """
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start shape {tuple(x_start.shape)} != x_t shape {tuple(x_t.shape)}")
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x_start
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._extract(self.posterior_variance, t, x_t)
        log_variance_clipped = self._extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance_clipped

    # ----------------------------------------------------------------------------------------
    # reparametrisations of the model output

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        """x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t, [iDDPM] eq. 9 solved for x_0."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor):
        """ε = (x_t / √ᾱ_t − x_0) / √(1/ᾱ_t − 1), [iDDPM] eq. 9 solved for ε."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def _predict_xstart_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor):
        """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v ([Salimans & Ho 2022] §4, with α = √ᾱ, σ = √(1 − ᾱ))."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def _v_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, the velocity a v-predicting model is trained on."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_start) * noise
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start
        )

    def snr_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-γ loss weights ([Hang et al. 2023] eqs. 7–9), per sample.

        Written for the x_0 error as w_t = min(SNR_t, γ) with SNR_t = ᾱ_t / (1 − ᾱ_t); the MSE of
        an ε-prediction is SNR_t times the x_0 error and that of a v-prediction (SNR_t + 1) times,
        so their weights are min(SNR_t, γ)/SNR_t and min(SNR_t, γ)/(SNR_t + 1).
        """
        abar = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64)[t.cpu().long()]
        snr = abar / (1.0 - abar)
        clipped = snr.clamp(max=self.snr_gamma)
        per_type = {
            ModelMeanType.START_X: clipped,
            ModelMeanType.EPSILON: clipped / snr,
            ModelMeanType.VELOCITY: clipped / (snr + 1.0),
        }
        if self.model_mean_type not in per_type:
            raise NotImplementedError(f"min-SNR weighting for {self.model_mean_type}")
        return per_type[self.model_mean_type].to(t.device, torch.float32)

    def _predict_xstart_from_xprev(self, x_t: torch.Tensor, t: torch.Tensor, xprev: torch.Tensor):
        """x_0 = (μ̃ − coef2·x_t) / coef1, [DDPM] eq. 7 solved for x_0 (μ̃ = predicted x_{t−1})."""
        return (
            self._extract(1.0 / self.posterior_mean_coef1, t, x_t) * xprev
            - self._extract(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t) * x_t
        )

    def _model_log_variance(self, var_values: torch.Tensor | None, x: torch.Tensor, t: torch.Tensor):
        """log Σ_θ(x_t, t) for the configured variance type.

        LEARNED_RANGE: log Σ = v' log β_t + (1 − v') log β̃_t with v' = (v + 1)/2 for the network
        output v ∈ [−1, 1]; [iDDPM] eq. 15. FIXED_LARGE uses β_t except at t = 0, where β̃_1 is
        used for a better decoder likelihood (as improved-diffusion does).
        """
        if self.model_var_type == ModelVarType.LEARNED:
            return var_values
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            min_log = self._extract(self.posterior_log_variance_clipped, t, x)
            max_log = self._extract(np.log(self.betas), t, x)
            frac = (var_values + 1.0) / 2.0
            return frac * max_log + (1.0 - frac) * min_log
        if self.model_var_type == ModelVarType.FIXED_LARGE:
            first = self.posterior_variance[1] if self.num_timesteps > 1 else self.betas[0]
            return self._extract(np.log(np.append(first, self.betas[1:])), t, x)
        if self.model_var_type == ModelVarType.FIXED_SMALL:
            return self._extract(self.posterior_log_variance_clipped, t, x)
        raise NotImplementedError(self.model_var_type)

    def _split_model_output(self, model_output: torch.Tensor, x: torch.Tensor):
        """(mean part, variance part or None); learned variances take C extra channels."""
        B, C = x.shape[:2]
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if model_output.shape != (B, 2 * C, *x.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must output {2 * C} channels (mean and variance) "
                    f"for {C}-channel input; got shape {tuple(model_output.shape)}"
                )
            return torch.split(model_output, C, dim=1)
        if model_output.shape != x.shape:
            raise ValueError(
                f"model output shape {tuple(model_output.shape)} != input shape {tuple(x.shape)} "
                "(a learned-sigma model needs a diffusion created with learn_sigma=True)"
            )
        return model_output, None

    def p_mean_variance_from_output(
        self,
        model_output: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """p(x_{t−1} | x_t) = N(μ_θ, Σ_θ) from a model output already computed at (x, t).

        For ε- and x_0-prediction the mean is the posterior mean μ̃_t(x̂_0, x_t) ([DDPM] eq. 7 with
        x̂_0 plugged in, equivalent to [iDDPM] eq. 13); x̂_0 is passed through ``denoised_fn``
        and then clipped to [−1, 1] when ``clip_denoised``.
        """
        mean_out, var_values = self._split_model_output(model_output, x)
        log_variance = self._model_log_variance(var_values, x, t)

        def process_xstart(x0: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, mean_out))
            mean = mean_out
        elif self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = process_xstart(mean_out)
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        elif self.model_mean_type == ModelMeanType.EPSILON:
            pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, mean_out))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        elif self.model_mean_type == ModelMeanType.VELOCITY:
            pred_xstart = process_xstart(self._predict_xstart_from_v(x, t, mean_out))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        else:
            raise NotImplementedError(self.model_mean_type)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
        }

    def p_mean_variance(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """Apply the model and return dict(mean, variance, log_variance, pred_xstart) of p(x_{t−1} | x_t)."""
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        model_output = self._call_model(model, x, t, model_kwargs)
        return self.p_mean_variance_from_output(model_output, x, t, clip_denoised, denoised_fn)

    # ----------------------------------------------------------------------------------------
    # ancestral sampling ([DDPM] Algorithm 2)

    def p_sample(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn=None,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """x_{t−1} = μ_θ(x_t, t) + σ_t z, z ~ N(0, I), with no noise at t = 0; [DDPM] Algorithm 2."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        noise = _randn_like(x, generator)
        nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def _loop_start(self, model, shape, noise, device, generator) -> torch.Tensor:
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list, got {type(shape).__name__}")
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise shape {tuple(noise.shape)} != requested shape {tuple(shape)}")
            return noise
        return randn(shape, device=_resolve_device(model, None, device), generator=generator)

    def _indices(self, progress: bool):
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            return tqdm(indices)
        return indices

    def p_sample_loop_progressive(
        self,
        model: Model,
        shape,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        progress: bool = False,
        generator: torch.Generator | None = None,
        denoised_fn=None,
        device=None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the output of :meth:`p_sample` at every step t = T−1 .. 0."""
        img = self._loop_start(model, shape, noise, device, generator)
        for i in self._indices(progress):
            t = torch.full((shape[0],), i, device=img.device, dtype=torch.long)
            with torch.no_grad():
                out = self.p_sample(model, img, t, clip_denoised, denoised_fn, model_kwargs, generator)
            yield out
            img = out["sample"]

    def p_sample_loop(
        self,
        model: Model,
        shape,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        progress: bool = False,
        generator: torch.Generator | None = None,
        denoised_fn=None,
        device=None,
    ) -> torch.Tensor:
        """Ancestral samples of ``shape`` from x_T ~ N(0, I) (or ``noise``); [DDPM] Algorithm 2."""
        steps = self.p_sample_loop_progressive(
            model, shape, noise, clip_denoised, model_kwargs, progress, generator, denoised_fn, device
        )
        return deque(steps, maxlen=1)[0]["sample"]  # only the last step's output is kept alive

    # ----------------------------------------------------------------------------------------
    # DDIM sampling ([DDIM] eqs. 12 and 16)

    def ddim_sample(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn=None,
        model_kwargs: dict | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step; [DDIM] eq. 12 with σ_t(η) from eq. 16.

        x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z,
        σ_t = η √((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t−1}).
        ε̂ is re-derived from the (clipped) x̂_0 so every mean type works.
        """
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = self._extract(self.alphas_cumprod, t, x)
        alpha_bar_prev = self._extract(self.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean_pred = (
            out["pred_xstart"] * torch.sqrt(alpha_bar_prev)
            + torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0.0)) * eps
        )
        nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        sample = mean_pred
        if eta != 0.0:
            sample = sample + nonzero * sigma * _randn_like(x, generator)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop_progressive(
        self,
        model: Model,
        shape,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        eta: float = 0.0,
        progress: bool = False,
        generator: torch.Generator | None = None,
        denoised_fn=None,
        device=None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the output of :meth:`ddim_sample` at every step t = T−1 .. 0."""
        img = self._loop_start(model, shape, noise, device, generator)
        for i in self._indices(progress):
            t = torch.full((shape[0],), i, device=img.device, dtype=torch.long)
            with torch.no_grad():
                out = self.ddim_sample(model, img, t, clip_denoised, denoised_fn, model_kwargs, eta, generator)
            yield out
            img = out["sample"]

    def ddim_sample_loop(
        self,
        model: Model,
        shape,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        eta: float = 0.0,
        progress: bool = False,
        generator: torch.Generator | None = None,
        denoised_fn=None,
        device=None,
    ) -> torch.Tensor:
        """DDIM samples of ``shape``; deterministic given the start noise when eta = 0."""
        steps = self.ddim_sample_loop_progressive(
            model, shape, noise, clip_denoised, model_kwargs, eta, progress, generator, denoised_fn, device
        )
        return deque(steps, maxlen=1)[0]["sample"]

    # ----------------------------------------------------------------------------------------
    # variational bound and training losses

    def _vb_terms_bpd(
        self,
        model: Model | None,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        *,
        model_output: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One term of the variational bound per sample, in bits per dimension.

        L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) for t > 0 ([iDDPM] eq. 5) and
        L_0 = −log p_θ(x_0 | x_1) with the discretized Gaussian decoder at t = 0 ([iDDPM] eq. 4,
        [DDPM] eq. 13). Pass ``model_output`` to score a precomputed (e.g. partly detached) output.
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        if model_output is None:
            out = self.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs=model_kwargs)
        else:
            out = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"]))
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll)
        output = torch.where(t == 0, decoder_nll, kl) / math.log(2.0)
        return {"output": output, "pred_xstart": out["pred_xstart"]}

    def training_losses(
        self,
        model: Model,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample training losses at timesteps ``t`` (shape [N] each, unreduced).

        * MSE / RESCALED_MSE: "mse" = ‖target − model‖² averaged over pixels, the L_simple of
          [DDPM] eq. 14 / [iDDPM] eq. 14 (target ε, x_0 or μ̃_t per the mean type). With a
          learned variance, "vb" = L_vlb term computed with the mean output *detached*, so it
          trains only Σ_θ ([iDDPM] §3.1), and "loss" = mse + vb, the L_hybrid of [iDDPM] eq. 16.
          RESCALED_MSE multiplies vb by T/1000 (λ = 0.001 at T = 1000, scaled with T).
        * KL / RESCALED_KL: "loss" = L_t in bits/dim ([iDDPM] eqs. 4–5), times T for RESCALED_KL.
        """
        if model_kwargs is None:
            model_kwargs = {}
        x_start = x_start.to(_work_dtype(x_start))
        if noise is None:
            noise = torch.randn_like(x_start)
        noise = noise.to(x_start.dtype)
        x_t = self.q_sample(x_start, t, noise=noise)

        terms: dict[str, torch.Tensor] = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)[
                "output"
            ]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        if self.loss_type not in (LossType.MSE, LossType.RESCALED_MSE):
            raise NotImplementedError(self.loss_type)

        model_output = self._call_model(model, x_t, t, model_kwargs)
        mean_out, var_values = self._split_model_output(model_output, x_t)
        if var_values is not None:
            frozen = torch.cat([mean_out.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(None, x_start, x_t, t, clip_denoised=False, model_output=frozen)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        elif self.model_mean_type == ModelMeanType.START_X:
            target = x_start
        elif self.model_mean_type == ModelMeanType.EPSILON:
            target = noise
        elif self.model_mean_type == ModelMeanType.VELOCITY:
            target = self._v_target(x_start, t, noise)
        else:
            raise NotImplementedError(self.model_mean_type)
        terms["mse"] = mean_flat((target - mean_out) ** 2)
        if self.snr_gamma > 0:
            terms["mse"] = terms["mse"] * self.snr_weights(t)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) in bits/dim; [iDDPM] eq. 6 (constant in θ)."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)

    def calc_bpd_loop(
        self,
        model: Model,
        x_start: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The whole variational bound L_vlb = L_0 + … + L_{T−1} + L_T ([iDDPM] eq. 3), bits/dim.

        Returns total_bpd [N], prior_bpd [N], and [N, T] tensors vb, xstart_mse and mse (ε MSE),
        with column j holding timestep T−1−j as improved-diffusion does.
        """
        x_start = x_start.to(_work_dtype(x_start))
        vb, xstart_mse, mse = [], [], []
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x_start.shape[0],), i, device=x_start.device, dtype=torch.long)
            noise = _randn_like(x_start, generator)
            x_t = self.q_sample(x_start, t, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised, model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        vb_t = torch.stack(vb, dim=1)
        prior_bpd = self._prior_bpd(x_start)
        return {
            "total_bpd": vb_t.sum(dim=1) + prior_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb_t,
            "xstart_mse": torch.stack(xstart_mse, dim=1),
            "mse": torch.stack(mse, dim=1),
        }
