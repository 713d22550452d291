"""Noise schedules and the elementwise likelihood terms (clinalign.diffusion.schedules / losses)."""

import math

import numpy as np
import pytest
import torch

from clinalign.diffusion import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    get_named_beta_schedule,
    mean_flat,
    normal_kl,
)


def test_linear_schedule_endpoints_at_1000_steps():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), np.diff(betas)[0])  # linear


def test_linear_schedule_is_scaled_by_1000_over_T():
    betas = get_named_beta_schedule("linear", 4000)
    assert betas.shape == (4000,)
    assert betas[0] == pytest.approx(0.25 * 1e-4) and betas[-1] == pytest.approx(0.25 * 0.02)


@pytest.mark.parametrize("T", [50, 1000, 4000])
def test_cosine_alphas_cumprod_match_closed_form_before_clipping(T):
    betas = get_named_beta_schedule("cosine", T)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  (eq. 17)
    alphas_cumprod = np.cumprod(1 - betas)
    unclipped = betas < 0.999
    last = np.argmin(unclipped) if not unclipped.all() else T  # first clipped step
    assert last >= T - 2  # clipping only bites at the very end of the chain
    expected = np.array([f((i + 1) / T) / f(0) for i in range(last)])
    np.testing.assert_allclose(alphas_cumprod[:last], expected, rtol=1e-10, atol=1e-14)
    assert betas.max() <= 0.999


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [21, 100, 1000])
def test_betas_lie_in_open_unit_interval(name, T):
    betas = get_named_beta_schedule(name, T)
    assert ((betas > 0) & (betas < 1)).all()


def test_linear_schedule_with_too_few_steps_is_refused():
    # scale = 1000/T makes the last beta >= 1 for T <= 20: a singular process.
    with pytest.raises(ValueError, match="more than 20 steps"):
        get_named_beta_schedule("linear", 20)
    assert get_named_beta_schedule("cosine", 5).max() < 1


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="cosine.*linear"):
        get_named_beta_schedule("sigmoid", 100)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    # scalars broadcast (the prior term uses N(0, 1))
    expected0 = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(normal_kl(m1, lv1, 0.0, 0.0), expected0)


def test_approx_cdf_is_close_to_exact():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    assert (approx_standard_normal_cdf(x) - exact).abs().max() < 1e-3


@pytest.mark.parametrize("log_scale", [-5.0, -2.0, 0.0, 1.0])
def test_discretized_gaussian_sums_to_one_over_256_bins(log_scale):
    bins = -1 + 2 * torch.arange(256, dtype=torch.float64) / 255  # the 8-bit values in [-1, 1]
    for mean in (-1.2, -0.3, 0.0, 0.77, 1.0):
        x = bins.view(256, 1)
        means = torch.full_like(x, mean)
        log_scales = torch.full_like(x, log_scale)
        logp = discretized_gaussian_log_likelihood(x, means=means, log_scales=log_scales)
        assert logp.shape == x.shape and (logp <= 0).all()
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_discretized_gaussian_peaks_at_the_mean_bin():
    bins = -1 + 2 * torch.arange(256, dtype=torch.float64) / 255
    logp = discretized_gaussian_log_likelihood(
        bins, means=torch.full_like(bins, bins[100].item()), log_scales=torch.full_like(bins, -4.0)
    )
    assert int(logp.argmax()) == 100


def test_discretized_gaussian_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        discretized_gaussian_log_likelihood(torch.zeros(3), means=torch.zeros(2), log_scales=torch.zeros(3))


def test_mean_flat_reduces_all_but_batch():
    x = torch.arange(24.0).view(2, 3, 4)
    torch.testing.assert_close(mean_flat(x), torch.tensor([5.5, 17.5]))
    torch.testing.assert_close(mean_flat(torch.tensor([1.0, 3.0])), torch.tensor([1.0, 3.0]))
