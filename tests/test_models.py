"""The denoiser built from the seed's flags."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clinalign.models.unet import ModelConfig, build_denoiser, count_parameters, grow_class_rows


def tiny(**over):
    return ModelConfig(
        **{
            "image_size": 16,
            "num_channels": 32,
            "num_res_blocks": 1,
            "attention_resolutions": "8",
            "num_heads": 2,
            "class_cond": True,
            **over,
        }
    )


@pytest.mark.parametrize("channels", [16, 32, 48, 64, 128])
def test_group_norms_never_degenerate_to_instance_norm(channels):
    """One channel per group erases each channel's mean: the model could not predict colour."""
    model = build_denoiser(tiny(num_channels=channels), 3, 2)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms
    assert all(m.num_channels // m.num_groups >= 2 for m in norms)
    if channels >= 64:
        assert {m.num_groups for m in norms} == {32}, "improved-diffusion's GroupNorm32"


def test_config_a_size_and_learned_sigma_output():
    cfg = ModelConfig(image_size=32, num_channels=64, num_res_blocks=2, learn_sigma=True, class_cond=True)
    model = build_denoiser(cfg, 3, 4)
    assert 9.5e6 < count_parameters(model) < 10.5e6  # improved-diffusion: 10.18 M
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([1.0, 500.0]), y=torch.tensor([0, 3]))
    assert out.shape == (2, 6, 32, 32)


def test_grayscale_and_class_embedding_growth_keeps_old_rows():
    weights = build_denoiser(tiny(), 1, 3).state_dict()
    old = weights["unet.class_embedding.weight"].clone()
    model = build_denoiser(tiny(), 1, 5)
    model.load_state_dict(grow_class_rows(weights, parents=[2, 0]))
    new = model.unet.class_embedding.weight
    assert new.shape[0] == 5 and torch.equal(new[:3], old)
    assert torch.equal(new[3], old[2]) and torch.equal(new[4], old[0])
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([3.0, 7.0]), y=torch.tensor([4, 1]))
    assert out.shape == (2, 1, 16, 16)


def test_the_middle_attention_is_normalised_as_in_improved_diffusion():
    """Without its GroupNorm the residual stream grew until every gradient was non-finite (PBC, 4,150 steps)."""
    model = build_denoiser(tiny(), 3, 2)
    assert isinstance(model.unet.mid_block.attentions[0].group_norm, nn.GroupNorm)
    legacy = build_denoiser(tiny(mid_attention_norm=False), 3, 2)
    assert legacy.unet.mid_block.attentions[0].group_norm is None
