"""Samplers against an exact ("oracle") denoiser on Gaussian data.

For data x_0 ~ N(μ, s²) per pixel, x_t = √ᾱ x_0 + √(1−ᾱ) ε is Gaussian too and the exact
ε-prediction is E[ε | x_t] = (x_t − √ᾱ μ) √(1−ᾱ) / (ᾱ s² + 1 − ᾱ). A correct sampler driven by
it must reproduce the data's mean and standard deviation.
"""

import numpy as np
import pytest
import torch

from clinalign.diffusion import (
    SAMPLERS,
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    create_diffusion,
    get_named_beta_schedule,
    sample_images,
)
from clinalign.diffusion.samplers import dpm_solver_pp_timesteps

MU, S = 0.3, 0.5
SHAPE = (256, 1, 8, 8)  # 16384 independent pixels


def oracle(diffusion, *, learned=False, rescaled=False, calls=None, mu=MU, s=S):
    """Exact ε-prediction for the base process of ``diffusion`` (original timestep indices)."""
    base = diffusion.base_betas if hasattr(diffusion, "base_betas") else diffusion.betas
    T = len(base)
    abar = torch.from_numpy(np.cumprod(1 - base))

    def model(x, t):
        if calls is not None:
            calls.append(t.clone())
        idx = (t.double() * T / 1000).round().long() if rescaled else t
        a = abar[idx].to(x).view(-1, *([1] * (x.ndim - 1)))
        eps = (x - a.sqrt() * mu) * (1 - a).sqrt() / (a * s * s + 1 - a)
        return torch.cat([eps, torch.full_like(x, -1.0)], 1) if learned else eps

    return model


def stats(x):
    return x.mean().item(), x.std().item()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize(
    "sampler,steps,std_tol",
    [("dpm++", 20, 0.05), ("ancestral", 100, 0.05), ("ddim", 50, 0.08)],
)
def test_samplers_recover_gaussian_data(schedule, sampler, steps, std_tol):
    d = create_diffusion(steps=1000, noise_schedule=schedule)  # ancestral uses β_t (FIXED_LARGE)
    x = sample_images(
        oracle(d),
        d,
        SHAPE,
        sampler=sampler,
        steps=steps,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(0),
    )
    mean, std = stats(x)
    assert mean == pytest.approx(MU, abs=0.02)
    assert std == pytest.approx(S, rel=std_tol)


@pytest.mark.parametrize("mu,s", [(0.0, 0.1), (-0.5, 0.9)])
def test_dpm_solver_pp_recovers_narrow_and_wide_data(mu, s):
    d = create_diffusion(steps=1000)
    for steps in (10, 20):
        x = sample_images(
            oracle(d, mu=mu, s=s),
            d,
            SHAPE,
            sampler="dpm++",
            steps=steps,
            clip_denoised=False,
            generator=torch.Generator().manual_seed(1),
        )
        mean, std = stats(x)
        assert mean == pytest.approx(mu, abs=0.03) and std == pytest.approx(s, rel=0.06)


def test_ancestral_with_small_variance_undershoots_on_coarse_grids():
    """With Σ = β̃_t the plug-in step ignores the uncertainty of x̂_0, which costs variance when
    steps are coarse (why iDDPM learns Σ); it shrinks as steps are added."""
    d = create_diffusion(steps=1000, sigma_small=True)
    std = {
        steps: stats(
            sample_images(
                oracle(d),
                d,
                (128, 1, 8, 8),
                sampler="ancestral",
                steps=steps,
                clip_denoised=False,
                generator=torch.Generator().manual_seed(2),
            )
        )[1]
        for steps in (50, 250)
    }
    assert 0.85 * S < std[50] < std[250] < S


def test_ddim_eta0_is_deterministic():
    d = create_diffusion(steps=200)
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_images(
        oracle(d),
        d,
        noise.shape,
        sampler="ddim",
        steps=20,
        noise=noise.clone(),
        generator=torch.Generator().manual_seed(1),
    )
    b = sample_images(
        oracle(d),
        d,
        noise.shape,
        sampler="ddim",
        steps=20,
        noise=noise.clone(),
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ddim_eta1_is_ancestral_sampling_with_posterior_variance():
    """σ_t(η=1) of DDIM eq. 16 is √β̃_t, and its mean is then μ̃_t: the DDPM step exactly."""
    d = create_diffusion(steps=100, sigma_small=True)
    a = d.ddim_sample_loop(oracle(d), SHAPE, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = d.p_sample_loop(oracle(d), SHAPE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_ddim_eta1_matches_ancestral_statistics_on_all_steps():
    d = create_diffusion(steps=300)  # ancestral uses β_t (FIXED_LARGE), DDIM η=1 uses β̃_t
    kw = dict(steps=None, clip_denoised=False)
    a = sample_images(oracle(d), d, SHAPE, sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(4), **kw)
    b = sample_images(oracle(d), d, SHAPE, sampler="ancestral", generator=torch.Generator().manual_seed(5), **kw)
    (ma, sa), (mb, sb) = stats(a), stats(b)
    assert ma == pytest.approx(mb, abs=0.02) and sa == pytest.approx(sb, rel=0.05)
    assert sa == pytest.approx(S, rel=0.05)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_results_are_reproducible_by_seed(sampler):
    d = create_diffusion(steps=100)

    def run(seed):
        return sample_images(
            oracle(d),
            d,
            (2, 1, 4, 4),
            sampler=sampler,
            steps=10,
            eta=0.5,
            generator=torch.Generator().manual_seed(seed),
        )

    torch.testing.assert_close(run(7), run(7), rtol=0, atol=0)
    assert not torch.equal(run(7), run(8))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_learned_sigma_channels_are_dropped(sampler):
    fixed = create_diffusion(steps=100, sigma_small=True)
    learned = create_diffusion(steps=100, learn_sigma=True)  # v = -1 selects β̃_t, i.e. sigma_small
    noise = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_images(
        oracle(fixed),
        fixed,
        noise.shape,
        sampler=sampler,
        steps=10,
        noise=noise,
        generator=torch.Generator().manual_seed(1),
    )
    b = sample_images(
        oracle(learned, learned=True),
        learned,
        noise.shape,
        sampler=sampler,
        steps=10,
        noise=noise,
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_model_sees_original_rescaled_timesteps(sampler):
    d = create_diffusion(steps=500, rescale_timesteps=True, timestep_respacing="50")
    calls = []
    x = sample_images(
        oracle(d, rescaled=True, calls=calls),
        d,
        SHAPE,
        sampler=sampler,
        steps=50 if sampler == "ddim" else 25,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(0),
    )
    seen = torch.cat(calls)
    assert seen.dtype == torch.float32 and seen.min() >= 0 and seen.max() < 1000
    assert seen.max() == pytest.approx(499 * 2) or sampler == "ddim"  # ddim50 strides 0..490
    mean, std = stats(x)
    assert mean == pytest.approx(MU, abs=0.03) and std == pytest.approx(S, rel=0.1)


def test_respaced_sampling_starts_from_the_base_process():
    d = create_diffusion(steps=1000, timestep_respacing="250")
    calls = []
    sample_images(oracle(d, calls=calls), d, (1, 1, 2, 2), sampler="ddim", steps=50)
    assert [int(t[0]) for t in calls] == list(range(980, -1, -20))
    calls.clear()
    sample_images(oracle(d, calls=calls), d, (1, 1, 2, 2), sampler="ancestral", steps=None)
    assert len(calls) == 250  # None: the given diffusion's own (respaced) steps
    calls.clear()
    sample_images(oracle(d, calls=calls), d, (1, 1, 2, 2), sampler="dpm++", steps=12)
    seen = [int(t[0]) for t in calls]
    assert len(seen) == 12 and seen[0] == 999 and seen == sorted(seen, reverse=True)


def test_ddim_without_an_integer_stride_falls_back_to_even_spacing(caplog):
    d = create_diffusion(steps=100)
    calls = []
    sample_images(oracle(d, calls=calls), d, (1, 1, 2, 2), sampler="ddim", steps=30)
    assert len(calls) == 30 and "evenly spaced" in caplog.text


def test_dpm_solver_timesteps_are_distinct_and_span_the_chain():
    for T in (1, 2, 3, 50, 1000):
        abar = np.cumprod(1 - np.linspace(1e-3, 0.2, T))
        for steps in (1, 2, 5, 20, 5000):
            ts = dpm_solver_pp_timesteps(abar, steps)
            assert ts[0] == T - 1 and ts[-1] == 0 and (np.diff(ts) < 0).all()
            assert len(ts) == (1 if T == 1 else min(steps, T - 1) + 1)


def test_single_step_processes():
    d = create_diffusion(steps=1000, timestep_respacing="1")
    for sampler in SAMPLERS:
        x = sample_images(
            oracle(d), d, (2, 1, 2, 2), sampler=sampler, steps=1, generator=torch.Generator().manual_seed(0)
        )
        assert torch.isfinite(x).all()


def test_clip_denoised_bounds_the_output():
    d = create_diffusion(steps=100)
    wide = oracle(d, mu=0.0, s=3.0)
    for sampler in SAMPLERS:
        x = sample_images(wide, d, SHAPE, sampler=sampler, steps=10, generator=torch.Generator().manual_seed(0))
        assert x.abs().max() <= 1.0


def test_noise_is_created_on_the_models_device_and_progress_runs():
    net = torch.nn.Conv2d(1, 1, 1)
    d = create_diffusion(steps=30, sigma_small=True)
    x = sample_images(lambda x, t: net(x), d, (1, 1, 2, 2), sampler="ancestral", progress=True)
    assert x.device == net.weight.device


def test_bad_arguments():
    d = create_diffusion(steps=50)
    with pytest.raises(ValueError, match="ancestral, ddim, dpm\\+\\+"):
        sample_images(oracle(d), d, (1, 1, 2, 2), sampler="heun")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sample_images(oracle(d), d, (1, 1, 2, 2), sampler="ddim", steps=0)


def test_predict_xstart_models_sample_too():
    betas = get_named_beta_schedule("linear", 1000)
    d = GaussianDiffusion(
        betas=betas,
        model_mean_type=ModelMeanType.START_X,
        model_var_type=ModelVarType.FIXED_SMALL,
        loss_type=LossType.MSE,
    )
    eps_model = oracle(d)
    abar = torch.from_numpy(d.alphas_cumprod)

    def x0_model(x, t):
        a = abar[t].to(x).view(-1, 1, 1, 1)
        return (x - (1 - a).sqrt() * eps_model(x, t)) / a.sqrt()

    for sampler, steps in (("dpm++", 20), ("ddim", 50)):
        x = sample_images(
            x0_model,
            d,
            SHAPE,
            sampler=sampler,
            steps=steps,
            clip_denoised=False,
            generator=torch.Generator().manual_seed(0),
        )
        mean, std = stats(x)
        assert mean == pytest.approx(MU, abs=0.02) and std == pytest.approx(S, rel=0.08)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_a_cpu_generator():
    d = create_diffusion(steps=100, learn_sigma=True)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 4, 3, padding=1)
    model = lambda x, t: torch.tanh(net(x))  # noqa: E731
    for sampler in SAMPLERS:
        cpu = sample_images(
            model, d, (2, 2, 4, 4), sampler=sampler, steps=10, generator=torch.Generator().manual_seed(0)
        )
        net.cuda()
        gpu = sample_images(
            model, d, (2, 2, 4, 4), sampler=sampler, steps=10, device="cuda", generator=torch.Generator().manual_seed(0)
        )
        net.cpu()
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
    net.cuda()
    x0 = torch.rand(3, 2, 4, 4, device="cuda") * 2 - 1
    t = torch.tensor([0, 10, 99], device="cuda")
    terms = d.training_losses(model, x0, t)
    assert all(v.device.type == "cuda" and v.shape == (3,) and torch.isfinite(v).all() for v in terms.values())
