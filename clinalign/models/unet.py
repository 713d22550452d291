"""The denoiser: diffusers' UNet2DModel built from the seed's (improved-diffusion's) flags.

Mapping of improved-diffusion's architecture flags onto UNet2DModel:
- ``channel_mult`` per image size as improved-diffusion chooses it ((1,2,3,4) at 64 px, (1,2,2,2)
  at 32 px); ``num_res_blocks`` per level down and ``num_res_blocks + 1`` up, as in both codes.
- ``attention_resolutions`` (pixels) picks the levels that get self-attention blocks; the middle
  block always has attention.
- ``num_heads`` becomes a fixed head width (channels at the first attention level / num_heads),
  because UNet2DModel takes one head width for all levels; at levels with more channels this
  gives more heads than improved-diffusion would.
- The class embedding is added to the time embedding (``num_class_embeds``), as in improved-diffusion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..utils.config import option

_DEFAULT_MULT = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2), 28: (1, 2, 2)}


def channel_mult_for(image_size: int, channel_mult: str = "") -> tuple[int, ...]:
    if channel_mult:
        return tuple(int(c) for c in channel_mult.split(","))
    if image_size in _DEFAULT_MULT:
        return _DEFAULT_MULT[image_size]
    # Any other size: halve while the side stays even and at least 4 px, widening like the 32 px model.
    levels, side = 1, image_size
    while side % 2 == 0 and side >= 8 and levels < 4:
        side //= 2
        levels += 1
    return (1,) + (2,) * (levels - 1)


def _groups(channels: int) -> int:
    """GroupNorm groups: 32 as in improved-diffusion from 64 channels up; at least 2 channels per group.

    One channel per group would be instance normalisation: the output norm would then erase each
    channel's spatial mean, so the network could not predict the image-wide (colour) component
    of the noise and narrow models would sample every cell in a random hue.
    """
    return math.gcd(32, max(1, channels // 2))


class Denoiser(nn.Module):
    """``model(x, t, y=None) -> eps`` (or eps and the variance interpolation when learning sigma)."""

    def __init__(self, unet: nn.Module, num_classes: int):
        super().__init__()
        self.unet = unet
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and y is None:
            raise ValueError("this model is class-conditional: pass y (class indices)")
        return self.unet(x, t, class_labels=y if self.num_classes else None).sample


@dataclass
class ModelConfig:
    """The denoiser's architecture: improved-diffusion's model flags, names and defaults.

    Stored in every checkpoint; a checkpoint's values win over defaults when it is resumed,
    finetuned or sampled. ``learn_sigma`` and ``sigma_small`` shape the diffusion's variance but
    are model flags in the seed, so they stay here.
    """

    image_size: int = option(64, "side of the square images the model sees (images are scaled and centre-cropped)")
    num_channels: int = option(128, "base channel width of the UNet")
    num_res_blocks: int = option(2, "residual blocks per resolution")
    num_heads: int = option(4, "attention heads (at the first attention resolution)")
    num_heads_upsample: int = option(-1, "accepted for compatibility; diffusers' UNet uses num_heads everywhere")
    attention_resolutions: str = option("16,8", "resolutions (in pixels) at which self-attention is used")
    channel_mult: str = option(
        "", "comma list of per-level channel multipliers; empty = improved-diffusion's choice for image_size"
    )
    dropout: float = option(0.0, "dropout in residual blocks")
    learn_sigma: bool = option(False, "learn the reverse-process variance (hybrid loss L_simple + 0.001 L_vlb)")
    sigma_small: bool = option(False, "fixed small variance (posterior) instead of beta_t when sigma is not learned")
    class_cond: bool = option(False, "condition on the class (file-name prefix before the first '_')")
    use_checkpoint: bool = option(False, "gradient checkpointing: less memory, slower")
    use_scale_shift_norm: bool = option(True, "FiLM-style scale/shift of the time+class embedding in residual blocks")
    # Set by --init_from: a diffusers UNet2DModel config (JSON) whose architecture replaces the flags above.
    diffusers_unet: str = option("", flag=False)
    # improved-diffusion normalises the input of every attention block; diffusers' middle block
    # drops that GroupNorm when scale-shift norm is on, and without it the residual stream grew
    # unboundedly (measured: |h| 3.6e4 at the middle block after 4,150 steps on PBC, then every
    # gradient non-finite). Checkpoints written before this field existed are built without it.
    mid_attention_norm: bool = option(
        True, "GroupNorm before the middle block's attention, as improved-diffusion [clinalign]"
    )


def build_denoiser(model_cfg: ModelConfig, in_channels: int, num_classes: int) -> Denoiser:
    from diffusers import UNet2DModel  # heavy import, only when a model is built

    if model_cfg.diffusers_unet:
        return _denoiser_from_diffusers_config(model_cfg, in_channels, num_classes)
    size = int(model_cfg.image_size)
    mult = channel_mult_for(size, model_cfg.channel_mult)
    ch = int(model_cfg.num_channels)
    if size % (2 ** (len(mult) - 1)):
        raise ConfigError(
            f"image_size {size} is not divisible by 2^{len(mult) - 1} for channel_mult {mult}; "
            "pick another --image_size or --channel_mult"
        )
    attn_px = {int(r) for r in str(model_cfg.attention_resolutions).split(",") if r.strip()}
    widths = tuple(ch * m for m in mult)
    resolutions = [size // 2**i for i in range(len(mult))]
    down = tuple("AttnDownBlock2D" if r in attn_px else "DownBlock2D" for r in resolutions)
    up = tuple("AttnUpBlock2D" if r in attn_px else "UpBlock2D" for r in reversed(resolutions))
    attn_widths = [w for w, r in zip(widths, resolutions) if r in attn_px] or [widths[-1]]
    head_dim = max(1, attn_widths[0] // int(model_cfg.num_heads))
    out_channels = in_channels * (2 if model_cfg.learn_sigma else 1)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=widths,
        layers_per_block=int(model_cfg.num_res_blocks),
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=head_dim,
        norm_num_groups=_groups(ch),
        attn_norm_num_groups=_groups(ch) if model_cfg.mid_attention_norm else None,
        dropout=float(model_cfg.dropout),
        resnet_time_scale_shift="scale_shift" if model_cfg.use_scale_shift_norm else "default",
        num_class_embeds=num_classes if (model_cfg.class_cond and num_classes) else None,
        flip_sin_to_cos=False,  # improved-diffusion's embedding order: [cos, sin]
        freq_shift=0,
    )
    if model_cfg.use_checkpoint:
        unet.enable_gradient_checkpointing()
    return Denoiser(unet, num_classes if model_cfg.class_cond else 0)


def _denoiser_from_diffusers_config(model_cfg: ModelConfig, in_channels: int, num_classes: int) -> Denoiser:
    """The architecture of a diffusers UNet2DModel config (a model started --init_from), sized for this run."""
    from diffusers import UNet2DModel

    config = json.loads(model_cfg.diffusers_unet)
    classes = num_classes if (model_cfg.class_cond and num_classes) else None
    config.update(
        sample_size=int(model_cfg.image_size),
        in_channels=in_channels,
        out_channels=in_channels * (2 if model_cfg.learn_sigma else 1),
        num_class_embeds=classes,
        dropout=float(model_cfg.dropout),
    )
    unet = UNet2DModel.from_config(config)
    if model_cfg.use_checkpoint:
        unet.enable_gradient_checkpointing()
    return Denoiser(unet, num_classes if model_cfg.class_cond else 0)


CLASS_EMBEDDING_KEY = "unet.class_embedding.weight"


def grow_class_rows(weights: dict[str, torch.Tensor], parents: list[int]) -> dict[str, torch.Tensor]:
    """Weights with class-embedding rows appended, each a copy of its parent's row (new concepts).

    A copy, not a random row: the concept starts by generating its parent, and finetuning on the
    images assigned to it moves it from there, so no class starts from noise.
    """
    if not parents:
        return weights
    if CLASS_EMBEDDING_KEY not in weights:
        raise ConfigError(
            "the checkpoint is not class-conditional; concepts need a model trained with --class_cond True"
        )
    emb = weights[CLASS_EMBEDDING_KEY]
    return {**weights, CLASS_EMBEDDING_KEY: torch.cat([emb, emb[torch.as_tensor(parents)]])}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
