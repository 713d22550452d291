"""A class-conditional image pipeline for diffusers: a clinalign model, loaded with diffusers alone.

This file is copied into every ``clinalign export --format diffusers`` folder, whose
``model_index.json`` names it, so that the folder loads without clinalign installed::

    import torch
    from diffusers import DiffusionPipeline, DDIMScheduler

    pipe = DiffusionPipeline.from_pretrained("exported/", trust_remote_code=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images = pipe(class_labels=["neutrophil", "eosinophil"], num_inference_steps=50,
                  generator=torch.Generator().manual_seed(0)).images

It imports only torch, numpy and diffusers. What differs from ``DDPMPipeline``:

- ``class_labels`` (ids or names; the names are the model's ``class_names``) go to the UNet;
- the UNet sees each timestep rescaled to [0, 1000) when ``rescale_timesteps`` (improved-diffusion's
  convention, which clinalign trains with), else as the integer index;
- a model with a learned variance outputs twice the image channels: schedulers that use it
  (``DDPMScheduler`` with ``variance_type`` ``learned_range``) get both halves, the others the
  noise (or x_0) half only;
- a model finetuned with ``--objective guidance`` is steered away from each class's rejected class,
  ``out(c) + w * (out(c) - out(c-rejected))`` on the prediction half (``config.guidance`` holds the
  pairs, ``config.guidance_scale`` the strength it was finetuned with; ``guidance_scale=`` overrides).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    ImagePipelineOutput,
)
from diffusers.utils.torch_utils import randn_tensor

LEARNED_VARIANCE = ("learned", "learned_range")
# DPM-Solver++(2M) as clinalign runs it: second order to the last step, which ends at the first
# training step's noise level (not at zero), with x_0 clipped to [-1, 1] (thresholding at a maximum of 1).
CLINALIGN_DPM = dict(
    algorithm_type="dpmsolver++",
    solver_order=2,
    lower_order_final=False,
    final_sigmas_type="sigma_min",
    thresholding=True,
    sample_max_value=1.0,
)


def dpm_timesteps(alphas_cumprod, steps: int) -> list[int]:
    """clinalign's DPM-Solver++ timesteps: ``steps`` indices from T-1 down, uniform in log-SNR.

    Each point of a uniform grid of lambda = log(alpha / sigma) is mapped to the nearest training
    index and collisions are pushed apart, so that exactly ``steps`` model calls are made (the
    solver then ends at index 0). Same as ``clinalign.diffusion.samplers.dpm_solver_pp_timesteps``.
    """
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    T = len(a)
    steps = max(1, min(int(steps), T - 1))
    lam = 0.5 * (np.log(a) - np.log1p(-a))
    grid = np.linspace(lam[0], lam[-1], steps + 1)
    idx = np.abs(lam[None, :] - grid[:, None]).argmin(axis=1)
    idx[0], idx[-1] = 0, T - 1
    for k in range(1, steps + 1):
        idx[k] = max(idx[k], idx[k - 1] + 1)
    idx[-1] = T - 1
    for k in range(steps - 1, -1, -1):
        idx[k] = min(idx[k], idx[k + 1] - 1)
    return [int(i) for i in idx[::-1][:-1]]


class ClinalignPipeline(DiffusionPipeline):
    """``pipe(class_labels=[...], num_inference_steps=N, generator=g)`` -> ``ImagePipelineOutput``."""

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet,
        scheduler,
        rescale_timesteps: bool = False,
        class_names: list[str] | None = None,
        guidance: dict[str, str] | None = None,
        guidance_scale: float = 0.0,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(
            rescale_timesteps=bool(rescale_timesteps),
            class_names=list(class_names or []),
            guidance=dict(guidance or {}),
            guidance_scale=float(guidance_scale),
        )
        self.sampler: str | None = None  # set by set_sampler: "dpm++" then takes clinalign's timesteps

    def set_sampler(self, name: str) -> None:
        """Swap in the diffusers scheduler that reproduces ``clinalign sample --sampler NAME``.

        "ddim": ``DDIMScheduler`` (equal to clinalign's DDIM when the step count divides the
        training steps); "dpm++": ``DPMSolverMultistepScheduler`` with clinalign's options and
        log-SNR-uniform timesteps; "ancestral": ``DDPMScheduler`` with evenly spaced steps.
        """
        config = dict(self.scheduler.config)
        if name == "ddim":
            self.scheduler = DDIMScheduler.from_config(config, timestep_spacing="leading")
        elif name == "dpm++":
            self.scheduler = DPMSolverMultistepScheduler.from_config(config, **CLINALIGN_DPM)
        elif name == "ancestral":
            self.scheduler = DDPMScheduler.from_config(config, timestep_spacing="linspace")
        else:
            raise ValueError(f"unknown sampler {name!r}; choose ddim, dpm++ or ancestral")
        self.sampler = name

    def label_ids(self, class_labels) -> torch.Tensor:
        """Class ids from ids or names (names as in ``config.class_names``)."""
        names = list(self.config.class_names or [])
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                if label not in names:
                    raise ValueError(f"unknown class {label!r}; this model's classes are: {', '.join(names)}")
                ids.append(names.index(label))
            else:
                ids.append(int(label))
        rows = self.unet.config.num_class_embeds or 0
        bad = [i for i in ids if not 0 <= i < rows]
        if bad:
            raise ValueError(f"class ids {bad} out of range: the model embeds {rows} classes")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def rejected_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Each label's rejected class (a class without one maps to itself, so guidance leaves it be)."""
        names, pairs = list(self.config.class_names or []), dict(self.config.guidance or {})
        table = torch.arange(self.unet.config.num_class_embeds or 0, device=labels.device)
        for name, rejected in pairs.items():
            table[names.index(name)] = names.index(rejected)
        return table[labels]

    def predict(self, x: torch.Tensor, t, labels: torch.Tensor | None, scale: float) -> torch.Tensor:
        """The UNet's output for this step, steered away from the rejected classes when ``scale`` != 0."""
        batch, channels = x.shape[0], self.unet.config.in_channels
        if labels is None or not scale or not self.config.guidance:
            return self.unet(x, self.model_timestep(t, batch), class_labels=labels).sample
        both = self.unet(
            torch.cat([x, x]),
            self.model_timestep(t, 2 * batch),
            class_labels=torch.cat([labels, self.rejected_ids(labels)]),
        ).sample
        out, rejected = both.chunk(2)
        steered = out[:, :channels] + scale * (out[:, :channels] - rejected[:, :channels])
        return torch.cat([steered, out[:, channels:]], dim=1)

    def model_timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """The timestep the UNet was trained to see for scheduler index ``t``."""
        t = torch.as_tensor(t, device=self.device).reshape(())
        if self.config.rescale_timesteps:
            t = t.to(torch.float32) * (1000.0 / self.scheduler.config.num_train_timesteps)
        return t.expand(batch)

    def scheduler_output(self, output: torch.Tensor, channels: int) -> torch.Tensor:
        """The model output the scheduler takes: both halves only where it uses the learned variance."""
        if output.shape[1] != 2 * channels:
            return output
        uses_variance = isinstance(self.scheduler, DDPMScheduler) and (
            self.scheduler.config.get("variance_type") in LEARNED_VARIANCE
        )
        return output if uses_variance else output[:, :channels]

    def step_kwargs(self, generator, eta: float) -> dict:
        """The keyword arguments this scheduler's ``step`` accepts (DDIM: eta and the clipped x_0's noise)."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        wanted = {"generator": generator, "eta": eta, "use_clipped_model_output": True}
        return {k: v for k, v in wanted.items() if k in accepted}

    @torch.no_grad()
    def __call__(
        self,
        class_labels=None,
        batch_size: int | None = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        eta: float = 0.0,
        timesteps: list[int] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_scale: float | None = None,
    ):
        """Sample one image per label (class-conditional model) or ``batch_size`` images.

        ``noise``: the starting x_T (N, C, H, W); else drawn from ``generator``. ``timesteps``: an
        explicit descending list for schedulers whose ``set_timesteps`` takes one. ``output_type``:
        "pil", "np" (NHWC in [0, 1]) or "pt" (NCHW in [0, 1]). ``guidance_scale``: the strength of the
        steer away from rejected samples (None: the model's own; 0: off).
        """
        scale = float(self.config.guidance_scale if guidance_scale is None else guidance_scale)
        cfg = self.unet.config
        labels = None
        if cfg.num_class_embeds:
            if class_labels is None:
                raise ValueError("this model is class-conditional: pass class_labels (ids or names)")
            labels = self.label_ids(class_labels)
            batch_size = len(labels)
        batch_size = int(batch_size or 1)
        shape = (batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if noise is None:
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        x = noise.to(self.device, self.unet.dtype)
        if timesteps is None and self.sampler == "dpm++" and isinstance(self.scheduler, DPMSolverMultistepScheduler):
            betas = self.scheduler.betas.double().cpu().numpy()
            timesteps = dpm_timesteps(np.cumprod(1.0 - betas), num_inference_steps)
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=self.device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        extra = self.step_kwargs(generator, eta)
        for t in self.progress_bar(self.scheduler.timesteps):
            output = self.predict(x, t, labels, scale)
            x = self.scheduler.step(self.scheduler_output(output, cfg.in_channels), t, x, **extra).prev_sample
        image = (x / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(np.asarray(image))
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
