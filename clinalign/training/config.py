"""Training settings: the seed's training flags (improved-diffusion's ``image_train.py``) plus
clinalign's additions, and the finetuning settings of the seed's ``image_finetuned.py``.

The architecture and diffusion settings live beside the code they configure
(:class:`clinalign.models.unet.ModelConfig`, :class:`clinalign.diffusion.DiffusionConfig`); every
command and seed script builds its flags from these dataclasses (:mod:`clinalign.utils.config`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..diffusion.timestep_samplers import SCHEDULE_SAMPLERS
from ..errors import ConfigError
from ..utils.config import option, repeated

REWARD_TRANSFORMS = ("raw", "threshold", "class_norm")
OBJECTIVES = ("reward-weighted", "kto", "guidance")


@dataclass
class TrainConfig:
    data_dir: str = option("", "folder of training images, searched recursively")
    schedule_sampler: str = option("uniform", "timestep sampler", choices=tuple(SCHEDULE_SAMPLERS))
    lr: float = option(1e-4, "learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    lr_anneal_steps: int = option(0, "linearly anneal the learning rate to 0 over this many steps, then stop (0 = off)")
    batch_size: int = option(1, "images per step (per process)")
    microbatch: int = option(-1, "split each batch into chunks of this size, accumulating gradients (-1 = off)")
    ema_rate: str = option("0.9999", "comma-separated EMA rates; sampling uses the first")
    log_interval: int = option(10, "steps between metrics.jsonl lines")
    save_interval: int = option(10000, "steps between checkpoints")
    resume_checkpoint: str = option(
        "", "checkpoint (file or directory) to start from; a run dir's own latest checkpoint wins"
    )
    use_fp16: bool = option(
        False, "mixed precision: bf16 autocast where supported (CPU, recent GPUs), else fp16 with loss scaling"
    )
    fp16_scale_growth: float = option(1e-3, "accepted for compatibility (loss scaling is dynamic)")
    # clinalign additions
    max_steps: int = option(0, "stop after this many optimizer steps in total (0 = no limit) [clinalign]")
    run_dir: str = option(
        "",
        "where config, checkpoints and metrics go; rerunning with the same run_dir resumes "
        "(default: $OPENAI_LOGDIR or runs/default) [clinalign]",
    )
    grad_clip: float = option(1.0, "clip the global gradient norm to this value (0 = off) [clinalign]")
    seed: int = option(0, "seed for data order, timesteps and noise [clinalign]")
    skip_bad_images: bool = option(
        False, "skip undecodable images (reporting the count) instead of stopping [clinalign]"
    )
    rgb: bool = option(False, "force 3 channels even if every image is grayscale [clinalign]")
    keep_checkpoints: int = option(0, "keep only the newest N checkpoints (0 = keep all) [clinalign]")
    device: str = option("auto", "torch device: auto, cpu, cuda, cuda:1, mps [clinalign]")
    compile: bool = option(
        False, "torch.compile the denoiser for training (a GPU option: no gain measured on CPU) [clinalign]"
    )
    init_from: str = option(
        "",
        "start from a diffusers UNet2DModel folder (or a pipeline folder with unet/, e.g. a clinalign export): "
        "its architecture, weights and schedule; a class embedding grows to the data's classes [clinalign]",
    )

    @property
    def ema_rates(self) -> list[str]:
        return [r.strip() for r in str(self.ema_rate).split(",") if r.strip()]

    @property
    def total_steps(self) -> int:
        """The step budget: the smaller of max_steps and lr_anneal_steps (0 = no limit)."""
        limits = [int(v) for v in (self.max_steps, self.lr_anneal_steps) if int(v or 0) > 0]
        return min(limits) if limits else 0

    def lr_at(self, step: int) -> float:
        if not self.lr_anneal_steps:
            return self.lr
        return self.lr * (1.0 - step / self.lr_anneal_steps)

    def run_path(self) -> Path:
        return Path(self.run_dir or os.environ.get("OPENAI_LOGDIR") or "runs/default")


# lr multiplier for new concept rows (the job textual inversion does with a high embedding lr).
# Measured on PBC (bench/concepts.py, 200 steps at lr 2e-4): x1 band/segmented accuracy 0.67/0.27
# against the parent's 0.66/0.34; x25 0.80/0.42; x100 0.85/0.50 with no class losing 5 points.
DEFAULT_CONCEPT_LR_SCALE = 100.0


@dataclass
class FinetuneConfig:
    """The seed's ``image_finetuned.py`` inputs and the finetuning objective."""

    data_pre_dir: str = option("", "real pretraining images (the beta-weighted anchor)")
    data_mod_dir: str = option("", "scored synthetic images (LABEL_xxx.png + rewards.csv)")
    rewards: str = option("", "rewards CSV (ID,rewards); default: DATA_MOD_DIR/rewards.csv")
    beta: float = option(0.3, "weight of the real-data diffusion loss (0.3: the published code's value)")
    reward_transform: str = option(
        "raw", "raw rewards, a hard threshold, or min-max normalised per class", choices=REWARD_TRANSFORMS
    )
    reward_threshold: float = option(0.5, "for --reward_transform threshold, and KTO's liked/disliked split")
    objective: str = option(
        "reward-weighted",
        "reward-weighted likelihood (the paper's), Diffusion-KTO on liked/disliked images (reward >= "
        "--reward_threshold is liked), or guidance: rejected images train a CLASS-rejected class that "
        "sampling steers away from",
        choices=OBJECTIVES,
    )
    kto_beta: float = option(5000.0, "KTO's scale on the loss difference to the frozen starting model")
    guidance_scale: float = option(
        1.0, "--objective guidance: how hard sampling steers away from the rejected images (sample --guidance)"
    )
    # Accepted samples under their own class are the model's output fed back to it; at 0 the classes
    # learn from real images only and the samples teach only what to steer away from.
    guidance_accepted_weight: float = option(
        1.0, "--objective guidance: loss weight of the accepted samples (0: only the rejected ones train)"
    )
    # Measured on PBC (docs/feedback.md): each round's samples are blurrier than real cells, and a
    # model that learns to denoise them at low noise learns their blur; class and shape live at high noise.
    synthetic_min_t: float = option(
        0.0,
        "the synthetic images train only at timesteps t >= this share of the schedule (drawn uniformly there), "
        "where class and shape are decided; fine detail is learned from real images alone (0: every timestep)",
    )
    # At equal images the no-feedback control sees twice the real cells a half-and-half finetune does;
    # this lets the finetune see more. On PBC it left FID where it was (docs/feedback.md).
    synthetic_batch_size: int = option(
        0,
        "scored synthetic images per step (0: --batch_size, as many as the real ones); the synthetic loss "
        "is a mean over them, so fewer weigh as much in all",
    )
    concept: list[str] = repeated(
        "a concept the synthetic images declare and the checkpoint lacks (default: "
        "DATA_MOD_DIR/concepts.json); its embedding row starts as the parent's",
        metavar="NAME=PARENT",
    )
    concept_lr_scale: float = option(
        DEFAULT_CONCEPT_LR_SCALE,
        "learning-rate multiplier for the embedding rows of "
        "new concepts; the existing classes' rows stay frozen while concepts are taught",
    )
    init_ema: bool = option(True, "start from the pretrained EMA weights (else the raw weights)")
    # A fresh optimizer's first steps move every weight by about the lr, and a restarted EMA (with
    # its warm-up) averages only the finetune's last tens of steps; carried, a round continues
    # training and differs from the no-feedback control by its data alone (docs/feedback.md).
    carry_state: bool = option(
        False,
        "continue the starting checkpoint's training: its raw weights, EMA and optimizer moments "
        "(else its EMA weights, a fresh optimizer and an EMA restarted there); --init_ema is then unused",
    )


def check_synthetic_min_t(share: float) -> float:
    """``share`` if it is a valid ``--synthetic_min_t`` (a share of the schedule in [0, 1)), else ConfigError."""
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"--synthetic_min_t {share}: give a share of the schedule in [0, 1)")
    return share
