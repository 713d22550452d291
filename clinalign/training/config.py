"""The one flag table.

Names and defaults are improved-diffusion's (``script_util.model_and_diffusion_defaults`` and
``image_train.py``), so the seed's command lines keep working; clinalign's additions are marked.
Every entry point (``clinalign train``, ``scripts/image_train.py``, finetuning, sampling) builds
its parser from these tables, and a run's ``config.json`` stores exactly these keys.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Flag:
    default: Any
    help: str
    choices: tuple | None = None


# The denoiser's architecture. Stored in every checkpoint; a checkpoint's values win over defaults.
MODEL_FLAGS: dict[str, Flag] = {
    "image_size": Flag(64, "side of the square images the model sees (images are scaled and centre-cropped)"),
    "num_channels": Flag(128, "base channel width of the UNet"),
    "num_res_blocks": Flag(2, "residual blocks per resolution"),
    "num_heads": Flag(4, "attention heads (at the first attention resolution)"),
    "num_heads_upsample": Flag(-1, "accepted for compatibility; diffusers' UNet uses num_heads everywhere"),
    "attention_resolutions": Flag("16,8", "resolutions (in pixels) at which self-attention is used"),
    "channel_mult": Flag("", "comma list of per-level channel multipliers; empty = improved-diffusion's choice for image_size"),
    "dropout": Flag(0.0, "dropout in residual blocks"),
    "learn_sigma": Flag(False, "learn the reverse-process variance (hybrid loss L_simple + 0.001 L_vlb)"),
    "sigma_small": Flag(False, "fixed small variance (posterior) instead of beta_t when sigma is not learned"),
    "class_cond": Flag(False, "condition on the class (file-name prefix before the first '_')"),
    "use_checkpoint": Flag(False, "gradient checkpointing: less memory, slower"),
    "use_scale_shift_norm": Flag(True, "FiLM-style scale/shift of the time+class embedding in residual blocks"),
}

DIFFUSION_FLAGS: dict[str, Flag] = {
    "diffusion_steps": Flag(1000, "number of forward-process steps T"),
    "noise_schedule": Flag("linear", "beta schedule", ("linear", "cosine")),
    "timestep_respacing": Flag("", "sample with fewer steps, e.g. '250' or 'ddim50'"),
    "use_kl": Flag(False, "train on the variational bound only (L_vlb)"),
    "predict_xstart": Flag(False, "predict x_0 instead of the noise"),
    "rescale_timesteps": Flag(True, "feed timesteps to the model scaled to [0, 1000)"),
    "rescale_learned_sigmas": Flag(True, "hybrid loss (L_simple + lambda L_vlb) when learn_sigma"),
}

TRAIN_FLAGS: dict[str, Flag] = {
    "data_dir": Flag("", "folder of training images, searched recursively"),
    "schedule_sampler": Flag("uniform", "timestep sampler", ("uniform", "loss-second-moment")),
    "lr": Flag(1e-4, "learning rate (AdamW)"),
    "weight_decay": Flag(0.0, "AdamW weight decay"),
    "lr_anneal_steps": Flag(0, "linearly anneal the learning rate to 0 over this many steps, then stop (0 = off)"),
    "batch_size": Flag(1, "images per step (per process)"),
    "microbatch": Flag(-1, "split each batch into chunks of this size, accumulating gradients (-1 = off)"),
    "ema_rate": Flag("0.9999", "comma-separated EMA rates; sampling uses the first"),
    "log_interval": Flag(10, "steps between metrics.jsonl lines"),
    "save_interval": Flag(10000, "steps between checkpoints"),
    "resume_checkpoint": Flag("", "checkpoint (file or directory) to start from; a run dir's own latest checkpoint wins"),
    "use_fp16": Flag(False, "mixed precision: bf16 autocast where supported (CPU, recent GPUs), else fp16 with loss scaling"),
    "fp16_scale_growth": Flag(1e-3, "accepted for compatibility (loss scaling is dynamic)"),
    # clinalign additions
    "max_steps": Flag(0, "stop after this many optimizer steps in total (0 = no limit) [clinalign]"),
    "run_dir": Flag("", "where config, checkpoints and metrics go; rerunning with the same run_dir resumes "
                        "(default: $OPENAI_LOGDIR or runs/default) [clinalign]"),
    "grad_clip": Flag(1.0, "clip the global gradient norm to this value (0 = off) [clinalign]"),
    "seed": Flag(0, "seed for data order, timesteps and noise [clinalign]"),
    "skip_bad_images": Flag(False, "skip undecodable images (reporting the count) instead of stopping [clinalign]"),
    "rgb": Flag(False, "force 3 channels even if every image is grayscale [clinalign]"),
    "keep_checkpoints": Flag(0, "keep only the newest N checkpoints (0 = keep all) [clinalign]"),
    "device": Flag("auto", "torch device: auto, cpu, cuda, cuda:1, mps [clinalign]"),
}

SAMPLE_FLAGS: dict[str, Flag] = {
    "clip_denoised": Flag(True, "clip predicted x_0 to [-1, 1] while sampling"),
    "num_samples": Flag(16, "how many images to draw in total (spread evenly over --classes)"),
    "batch_size": Flag(16, "images per forward pass"),
    "use_ddim": Flag(False, "DDIM sampling (same as --sampler ddim)"),
    "model_path": Flag("", "checkpoint to sample from (same as --checkpoint)"),
}


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, table: dict[str, Flag],
              skip: tuple[str, ...] = (), inherit: bool = False) -> None:
    """Add ``--name`` options in improved-diffusion's style (``--learn_sigma True``).

    With ``inherit=True`` an option the user does not type stays ``None`` so that ``resolve`` can
    take the value from a checkpoint's config first and the table's default last: resuming,
    finetuning and sampling then never need the architecture flags repeated.
    """
    for name, flag in table.items():
        if name in skip:
            continue
        kind = type(flag.default)
        default = None if inherit else flag.default
        text = f"{flag.help} (default: {flag.default!r}{', or the checkpoint' if inherit else ''})"
        if kind is bool:
            parser.add_argument(f"--{name}", type=str2bool, default=default, metavar="BOOL", help=text)
        else:
            parser.add_argument(f"--{name}", type=kind, default=default, choices=flag.choices, help=text)


def pick(args: argparse.Namespace | dict, table: dict[str, Flag]) -> dict[str, Any]:
    values = vars(args) if isinstance(args, argparse.Namespace) else args
    return {name: values[name] for name in table if name in values}


def defaults(table: dict[str, Flag]) -> dict[str, Any]:
    return {name: flag.default for name, flag in table.items()}


def typed(args: argparse.Namespace | dict, table: dict[str, Flag]) -> dict[str, Any]:
    """The options of ``table`` the user typed (those left ``None`` by ``add_flags(inherit=True)``)."""
    return {k: v for k, v in pick(args, table).items() if v is not None}


def resolve(args: argparse.Namespace | dict, table: dict[str, Flag],
            base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Typed value, else ``base`` (a checkpoint's config), else the table's default."""
    out = defaults(table)
    out.update({k: v for k, v in (base or {}).items() if k in table})
    out.update(typed(args, table))
    return out
