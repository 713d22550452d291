"""Timestep respacing: space_timesteps, SpacedDiffusion and the cached respace()."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clinalign.diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    SpacedDiffusion,
    create_diffusion,
    get_named_beta_schedule,
    respace,
    space_timesteps,
)

KW = dict(
    model_mean_type=ModelMeanType.EPSILON, model_var_type=ModelVarType.LEARNED_RANGE, loss_type=LossType.RESCALED_MSE
)


# ---------------------------------------------------------------------------------------------
# space_timesteps: exact outputs of improved-diffusion's algorithm


def test_ddim_striding():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim1000") == set(range(1000))
    assert space_timesteps(4000, "ddim100") == set(range(0, 4000, 40))
    assert space_timesteps(1000, "ddim1") == {0}  # (improved-diffusion raises here)
    with pytest.raises(ValueError, match="exactly 30 steps"):
        space_timesteps(100, "ddim30")  # stride 3 gives 34 steps, stride 4 gives 25


def test_sections_10_15_20_of_300():
    # The docstring example of improved-diffusion: three sections of 100 steps strided to 10, 15
    # and 20 steps. Float accumulation of the stride decides ties (e.g. 149, not 150), as there.
    assert sorted(space_timesteps(300, "10,15,20")) == [
        0,
        11,
        22,
        33,
        44,
        55,
        66,
        77,
        88,
        99,
        100,
        107,
        114,
        121,
        128,
        135,
        142,
        149,
        157,
        164,
        171,
        178,
        185,
        192,
        199,
        200,
        205,
        210,
        216,
        221,
        226,
        231,
        236,
        242,
        247,
        252,
        257,
        263,
        268,
        273,
        278,
        283,
        289,
        294,
        299,
    ]
    assert space_timesteps(300, [10, 15, 20]) == space_timesteps(300, "10,15,20")


def test_250_of_1000():
    steps = sorted(space_timesteps(1000, "250"))
    assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
    assert steps[:12] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44]
    assert steps[40:45] == [160, 164, 169, 173, 177]  # stride 999/249 ≈ 4.012
    assert steps[-5:] == [983, 987, 991, 995, 999]


def test_uneven_sections_and_errors():
    assert sorted(space_timesteps(10, "3,3")) == [0, 2, 4, 5, 7, 9]
    assert space_timesteps(10, "1,1") == {0, 5}
    with pytest.raises(ValueError, match="cannot divide section of 5 steps into 6"):
        space_timesteps(10, "6,1")


@settings(max_examples=60, deadline=None)
@given(data=st.data(), T=st.integers(min_value=1, max_value=400), n_sections=st.integers(1, 5))
def test_space_timesteps_invariants(data, T, n_sections):
    if n_sections > T:
        n_sections = T
    size_per, extra = divmod(T, n_sections)
    sizes = [size_per + (1 if i < extra else 0) for i in range(n_sections)]
    counts = [data.draw(st.integers(min_value=1, max_value=size)) for size in sizes]
    steps = space_timesteps(T, ",".join(map(str, counts)))
    assert len(steps) == sum(counts)  # distinct steps, as many as asked
    assert all(0 <= s < T for s in steps)
    start = 0
    for size, count in zip(sizes, counts):
        inside = sorted(s for s in steps if start <= s < start + size)
        assert len(inside) == count and inside[0] == start  # every section starts at its first step
        if count > 1:
            assert inside[-1] == start + size - 1  # ... and ends at its last step
        start += size


@settings(max_examples=60, deadline=None)
@given(T=st.integers(min_value=1, max_value=2000), stride=st.integers(min_value=1, max_value=2000))
def test_ddim_spacing_invariants(T, stride):
    count = len(range(0, T, stride))
    steps = space_timesteps(T, f"ddim{count}")
    assert len(steps) == count and min(steps) == 0
    gaps = np.diff(sorted(steps))
    assert len(set(gaps)) <= 1  # a single integer stride


# ---------------------------------------------------------------------------------------------
# SpacedDiffusion


def test_keeping_all_steps_reproduces_the_base_process():
    betas = get_named_beta_schedule("cosine", 120)
    base = GaussianDiffusion(betas=betas, **KW)
    spaced = SpacedDiffusion(use_timesteps=range(120), betas=betas, **KW)
    np.testing.assert_allclose(spaced.betas, base.betas, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(spaced.posterior_variance, base.posterior_variance, rtol=1e-9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    out_channels = torch.randn(4, 4, 3, 3, generator=g, dtype=torch.float64).tanh()
    model = lambda x_, t: out_channels * (1 + t.double().view(-1, 1, 1, 1) / 100)  # noqa: E731  depends on t
    t = torch.tensor([0, 1, 60, 119])
    a, b = base.p_mean_variance(model, x, t), spaced.p_mean_variance(model, x, t)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("spacing", ["ddim50", "250", "10,15,20", "7"])
def test_respaced_alphas_cumprod_match_base_at_kept_steps(spacing):
    betas = get_named_beta_schedule("linear", 1000)
    base = GaussianDiffusion(betas=betas, **KW)
    use = space_timesteps(1000, spacing)
    spaced = SpacedDiffusion(use_timesteps=use, betas=betas, **KW)
    assert spaced.num_timesteps == len(use) and spaced.timestep_map == sorted(use)
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[sorted(use)], rtol=1e-12)
    assert ((spaced.betas > 0) & (spaced.betas < 1)).all()


@pytest.mark.parametrize("rescale", [False, True])
def test_model_receives_original_timesteps(rescale):
    d = create_diffusion(steps=400, timestep_respacing="ddim20", rescale_timesteps=rescale)
    seen = []
    model = lambda x, t: seen.append(t.clone()) or torch.zeros_like(x)  # noqa: E731
    x = torch.zeros(3, 1, 2, 2)
    d.p_mean_variance(model, x, torch.tensor([0, 1, 19]))
    d.training_losses(model, x, torch.tensor([0, 1, 19]))
    for t in seen:
        if rescale:
            assert t.dtype == torch.float32
            torch.testing.assert_close(t, torch.tensor([0.0, 20 * 1000 / 400, 380 * 1000 / 400]))
        else:
            assert t.dtype == torch.long and t.tolist() == [0, 20, 380]


def test_respace_starts_from_base_betas_and_caches():
    d = create_diffusion(steps=1000, timestep_respacing="250")
    r = respace(d, "ddim50")
    assert r.timestep_map == list(range(0, 1000, 20))  # strides the 1000 base steps, not the 250
    np.testing.assert_allclose(r.alphas_cumprod, create_diffusion(steps=1000).alphas_cumprod[::20], rtol=1e-12)
    assert respace(d, "ddim50") is r
    assert (r.model_var_type, r.loss_type, r.rescale_timesteps) == (d.model_var_type, d.loss_type, d.rescale_timesteps)
    base = GaussianDiffusion(betas=get_named_beta_schedule("linear", 100), **KW)
    assert respace(base, [10]).timestep_map == sorted(space_timesteps(100, "10"))


def test_bad_use_timesteps_are_refused():
    with pytest.raises(ValueError, match="subset"):
        SpacedDiffusion(use_timesteps=[0, 100], betas=get_named_beta_schedule("linear", 100), **KW)
