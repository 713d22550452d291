"""GaussianDiffusion: forward process, posterior, model parametrisations, VB terms and losses."""

import math

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
    create_diffusion,
    get_named_beta_schedule,
)


def make(T=100, mean=ModelMeanType.EPSILON, var=ModelVarType.FIXED_SMALL, loss=LossType.MSE, schedule="linear", **kw):
    return GaussianDiffusion(
        betas=get_named_beta_schedule(schedule, T), model_mean_type=mean, model_var_type=var, loss_type=loss, **kw
    )


class TinyNet(torch.nn.Module):
    """A conv net with separate heads for the mean and (optionally) the variance channels."""

    def __init__(self, channels=2, learn_sigma=False):
        super().__init__()
        self.mean_head = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.var_head = torch.nn.Conv2d(channels, channels, 3, padding=1) if learn_sigma else None

    def forward(self, x, t):
        h = x + 0.001 * t.float().view(-1, 1, 1, 1)
        out = self.mean_head(h)
        if self.var_head is not None:
            out = torch.cat([out, torch.tanh(self.var_head(h))], dim=1)
        return out


def t_batch(n, value):
    return torch.full((n,), value, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# forward process and posterior


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("step", [0, 37, 99])
def test_q_sample_moments(schedule, step):
    d = make(schedule=schedule)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    g = torch.Generator().manual_seed(step)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    xt = d.q_sample(x0, t_batch(n, step), noise=noise)
    abar = d.alphas_cumprod[step]
    var = 1 - abar
    se = math.sqrt(var / n)
    assert abs(xt.mean().item() - math.sqrt(abar) * 0.7) < 5 * se
    assert xt.var().item() == pytest.approx(var, rel=0.02)
    mean, variance, log_variance = d.q_mean_variance(x0[:3], t_batch(3, step))
    torch.testing.assert_close(mean, torch.full_like(mean, math.sqrt(abar) * 0.7))
    torch.testing.assert_close(variance, torch.full_like(mean, var))
    torch.testing.assert_close(log_variance, torch.full_like(mean, math.log(var)))


@settings(max_examples=30, deadline=None)
@given(step=st.integers(min_value=1, max_value=99), x0=st.floats(-1, 1), xt=st.floats(-3, 3))
def test_posterior_matches_bayes_rule(step, x0, xt):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): precision-weighted product of Gaussians."""
    d = make(schedule="cosine")
    alpha, abar_prev = 1 - d.betas[step], d.alphas_cumprod_prev[step]
    precision = alpha / d.betas[step] + 1 / (1 - abar_prev)
    mean = (math.sqrt(alpha) * xt / d.betas[step] + math.sqrt(abar_prev) * x0 / (1 - abar_prev)) / precision
    m, v, lv = d.q_posterior_mean_variance(
        torch.tensor([[x0]], dtype=torch.float64), torch.tensor([[xt]], dtype=torch.float64), t_batch(1, step)
    )
    assert m.item() == pytest.approx(mean, rel=1e-9, abs=1e-12)
    assert v.item() == pytest.approx(1 / precision, rel=1e-9)
    assert lv.item() == pytest.approx(math.log(1 / precision), rel=1e-9)


def test_posterior_at_t0_is_x0_and_log_variance_is_clipped():
    d = make()
    x0, xt = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-2.0]], dtype=torch.float64)
    m, v, lv = d.q_posterior_mean_variance(x0, xt, t_batch(1, 0))
    assert m.item() == pytest.approx(0.3) and v.item() == 0.0
    assert lv.item() == pytest.approx(math.log(d.posterior_variance[1]))


def test_extracted_arrays_follow_device_and_dtype():
    d = make()
    x32, x64, xbf = torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.bfloat16)
    assert d.q_mean_variance(x32, t_batch(2, 5))[1].dtype == torch.float32
    assert d.q_mean_variance(x64, t_batch(2, 5))[1].dtype == torch.float64
    assert d.q_mean_variance(xbf, t_batch(2, 5))[1].dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# model parametrisations


@pytest.mark.parametrize("mean_type", list(ModelMeanType))
def test_each_mean_type_recovers_x0_from_an_exact_model(mean_type):
    d = make(mean=mean_type)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 50, 99])
    xt = d.q_sample(x0, t, noise)
    true_mean = d.q_posterior_mean_variance(x0, xt, t)[0]
    a = torch.from_numpy(d.alphas_cumprod)[t].view(-1, 1, 1, 1)
    velocity = a.sqrt() * noise - (1 - a).sqrt() * x0  # Salimans & Ho 2022
    exact = {
        ModelMeanType.EPSILON: noise,
        ModelMeanType.START_X: x0,
        ModelMeanType.PREVIOUS_X: true_mean,
        ModelMeanType.VELOCITY: velocity,
    }[mean_type]
    out = d.p_mean_variance(lambda x, ts: exact, xt, t, clip_denoised=False)
    torch.testing.assert_close(out["pred_xstart"], x0)
    torch.testing.assert_close(out["mean"], true_mean)


def test_variance_types():
    d_small, d_large = make(var=ModelVarType.FIXED_SMALL), make(var=ModelVarType.FIXED_LARGE)
    d_range = make(var=ModelVarType.LEARNED_RANGE)
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 10, 99])
    eps = torch.zeros_like(x)
    small = d_small.p_mean_variance(lambda *_: eps, x, t)["log_variance"][:, 0, 0, 0]
    large = d_large.p_mean_variance(lambda *_: eps, x, t)["log_variance"][:, 0, 0, 0]
    np.testing.assert_allclose(small.numpy(), d_small.posterior_log_variance_clipped[[0, 10, 99]])
    np.testing.assert_allclose(
        large.numpy(), np.log([d_large.posterior_variance[1], d_large.betas[10], d_large.betas[99]])
    )
    # LEARNED_RANGE: v = -1 gives the small variance, v = +1 the large one (eq. 15), v = 0 the geometric mean.
    for v, expected in [(-1.0, small), (1.0, np.log(d_range.betas[[0, 10, 99]])), (0.0, None)]:
        out = d_range.p_mean_variance(lambda *_, v=v: torch.cat([eps, torch.full_like(x, v)], 1), x, t)
        got = out["log_variance"][:, 0, 0, 0]
        if expected is None:
            expected = 0.5 * (small + torch.from_numpy(np.log(d_range.betas[[0, 10, 99]])))
        torch.testing.assert_close(got, torch.as_tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(out["variance"], out["log_variance"].exp())


def test_learned_sigma_requires_2C_channels():
    d = make(var=ModelVarType.LEARNED_RANGE)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="6 channels"):
        d.p_mean_variance(lambda *_: torch.zeros_like(x), x, t_batch(2, 1))
    with pytest.raises(ValueError, match="learn_sigma"):
        make().p_mean_variance(lambda *_: torch.zeros(2, 6, 4, 4), x, t_batch(2, 1))


def test_model_receives_rescaled_timesteps():
    seen = []
    d = make(T=250, rescale_timesteps=True)
    d.p_mean_variance(lambda x, t: seen.append(t) or torch.zeros_like(x), torch.zeros(2, 1), torch.tensor([0, 249]))
    torch.testing.assert_close(seen[0], torch.tensor([0.0, 996.0]))
    seen.clear()
    make(T=250).p_mean_variance(
        lambda x, t: seen.append(t) or torch.zeros_like(x), torch.zeros(2, 1), torch.tensor([0, 249])
    )
    assert seen[0].dtype == torch.long and seen[0].tolist() == [0, 249]


# ---------------------------------------------------------------------------------------------
# variational bound


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vb_kl_vanishes_for_a_perfect_model(schedule):
    d = make(schedule=schedule)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 50, 98, 99])
    xt = d.q_sample(x0, t, noise)
    out = d._vb_terms_bpd(lambda x, ts: noise, x0, xt, t, clip_denoised=False)
    assert out["output"].shape == (6,)
    assert out["output"].abs().max().item() < 1e-8
    # a wrong model pays a positive KL
    wrong = d._vb_terms_bpd(lambda x, ts: noise + 0.5, x0, xt, t, clip_denoised=False)["output"]
    assert (wrong > 1e-6).all()


def test_vb_at_t0_is_the_decoder_nll_in_bits():
    d = make()
    x0 = (torch.randint(0, 256, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0)) / 127.5 - 1).double()
    t = t_batch(3, 0)
    xt = d.q_sample(x0, t, torch.zeros_like(x0))
    out = d._vb_terms_bpd(lambda x, ts: torch.zeros_like(x), x0, xt, t, clip_denoised=False)["output"]
    # the model is nearly exact at t = 0 with std sqrt(posterior_variance[1]) ≈ 0.01: NLL is small, positive
    assert (out >= 0).all() and (out < 8).all()


def test_calc_bpd_loop_shapes_and_total():
    d = make(T=25, var=ModelVarType.LEARNED_RANGE)
    model = TinyNet(channels=1, learn_sigma=True)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    out = d.calc_bpd_loop(model, x0, generator=torch.Generator().manual_seed(0))
    assert out["vb"].shape == out["xstart_mse"].shape == out["mse"].shape == (2, 25)
    torch.testing.assert_close(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
    assert torch.isfinite(out["total_bpd"]).all() and (out["prior_bpd"] >= 0).all()


# ---------------------------------------------------------------------------------------------
# training losses


@pytest.mark.parametrize("loss_type", list(LossType))
@pytest.mark.parametrize("mean_type", list(ModelMeanType))
@pytest.mark.parametrize("var_type", [ModelVarType.FIXED_SMALL, ModelVarType.FIXED_LARGE, ModelVarType.LEARNED_RANGE])
def test_training_losses_are_finite_per_sample(loss_type, mean_type, var_type):
    torch.manual_seed(0)
    d = make(T=50, mean=mean_type, var=var_type, loss=loss_type)
    learned = var_type == ModelVarType.LEARNED_RANGE
    model = TinyNet(channels=2, learn_sigma=learned)
    x0 = torch.rand(5, 2, 4, 4) * 2 - 1
    t = torch.tensor([0, 1, 10, 25, 49])
    terms = d.training_losses(model, x0, t)
    assert terms["loss"].shape == (5,) and torch.isfinite(terms["loss"]).all()
    if loss_type.is_vb():
        assert set(terms) == {"loss"}
    else:
        assert "mse" in terms and terms["mse"].shape == (5,)
        assert ("vb" in terms) == learned
        expected = terms["mse"] + terms["vb"] if learned else terms["mse"]
        torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].mean().backward()  # differentiable


def test_losses_are_per_sample_and_unreduced():
    d = make(T=50)
    model = TinyNet(channels=1)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([3, 7, 20, 44])
    batch = d.training_losses(model, x0, t, noise=noise)["loss"]
    single = torch.stack(
        [d.training_losses(model, x0[i : i + 1], t[i : i + 1], noise=noise[i : i + 1])["loss"][0] for i in range(4)]
    )
    torch.testing.assert_close(batch, single)
    # the documented objective: eps-MSE averaged over pixels (L_simple)
    xt = d.q_sample(x0, t, noise)
    torch.testing.assert_close(batch, ((model(xt, t) - noise) ** 2).mean(dim=(1, 2, 3)))


def test_rescaled_losses_scale_as_improved_diffusion():
    torch.manual_seed(0)
    model = TinyNet(channels=1, learn_sigma=True)
    x0, noise, t = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4), torch.tensor([0, 9, 30])
    T = 40
    kl = make(T=T, var=ModelVarType.LEARNED_RANGE, loss=LossType.KL).training_losses(model, x0, t, noise=noise)["loss"]
    rkl = make(T=T, var=ModelVarType.LEARNED_RANGE, loss=LossType.RESCALED_KL).training_losses(
        model, x0, t, noise=noise
    )["loss"]
    torch.testing.assert_close(rkl, kl * T)
    mse = make(T=T, var=ModelVarType.LEARNED_RANGE, loss=LossType.MSE).training_losses(model, x0, t, noise=noise)
    rmse = make(T=T, var=ModelVarType.LEARNED_RANGE, loss=LossType.RESCALED_MSE).training_losses(
        model, x0, t, noise=noise
    )
    torch.testing.assert_close(rmse["mse"], mse["mse"])
    torch.testing.assert_close(rmse["vb"], mse["vb"] * T / 1000)
    torch.testing.assert_close(mse["vb"], kl)  # the hybrid's vb is the same L_t, only detached


def test_hybrid_vb_trains_only_the_variance():
    torch.manual_seed(0)
    d = make(T=50, var=ModelVarType.LEARNED_RANGE, loss=LossType.RESCALED_MSE)
    model = TinyNet(channels=2, learn_sigma=True)
    x0, t = torch.rand(4, 2, 4, 4) * 2 - 1, torch.tensor([0, 5, 20, 49])
    terms = d.training_losses(model, x0, t, noise=torch.randn(4, 2, 4, 4))
    terms["vb"].sum().backward(retain_graph=True)
    assert model.mean_head.weight.grad is None or model.mean_head.weight.grad.abs().max() == 0
    assert model.var_head.weight.grad.abs().max() > 0
    model.zero_grad(set_to_none=True)
    terms["mse"].sum().backward()
    grad = model.var_head.weight.grad
    assert grad is None or grad.abs().max() == 0  # mse never touches the variance channels
    assert model.mean_head.weight.grad.abs().max() > 0


def test_learned_sigma_output_is_split_into_mean_and_variance():
    d = make(T=50, var=ModelVarType.LEARNED_RANGE)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1, torch.randn(3, 2, 4, 4, generator=g)
    junk = torch.randn(3, 2, 4, 4, generator=g).clamp(-1, 1)
    terms = d.training_losses(lambda x, t: torch.cat([noise, junk], 1), x0, torch.tensor([1, 2, 3]), noise=noise)
    assert terms["mse"].abs().max() == 0  # the first C channels are the ε prediction
    assert (terms["vb"] > 0).all()  # the last C channels set a (wrong) variance


def test_bf16_model_output_gives_float32_losses():
    d = make(T=50, var=ModelVarType.LEARNED_RANGE)
    net = torch.nn.Conv2d(1, 2, 3, padding=1).to(torch.bfloat16)
    x0 = (torch.rand(2, 1, 4, 4) * 2 - 1).to(torch.bfloat16)
    terms = d.training_losses(lambda x, t: torch.tanh(net(x.to(torch.bfloat16))), x0, torch.tensor([0, 30]))
    assert all(v.dtype == torch.float32 for v in terms.values())
    assert all(torch.isfinite(v).all() for v in terms.values())


def test_create_diffusion_flags_map_like_improved_diffusion():
    d = create_diffusion()
    assert (d.model_mean_type, d.model_var_type, d.loss_type) == (
        ModelMeanType.EPSILON,
        ModelVarType.FIXED_LARGE,
        LossType.RESCALED_MSE,
    )
    assert d.num_timesteps == 1000 and not d.rescale_timesteps
    d = create_diffusion(
        steps=200,
        learn_sigma=True,
        noise_schedule="cosine",
        use_kl=True,
        predict_xstart=True,
        rescale_timesteps=True,
        timestep_respacing="50",
    )
    assert (d.model_mean_type, d.model_var_type, d.loss_type) == (
        ModelMeanType.START_X,
        ModelVarType.LEARNED_RANGE,
        LossType.RESCALED_KL,
    )
    assert d.num_timesteps == 50 and d.original_num_steps == 200 and d.rescale_timesteps
    np.testing.assert_allclose(d.base_betas, get_named_beta_schedule("cosine", 200))
    assert create_diffusion(sigma_small=True).model_var_type == ModelVarType.FIXED_SMALL
    assert create_diffusion(rescale_learned_sigmas=False).loss_type == LossType.MSE
    with pytest.raises(ValueError, match="noise schedule"):
        create_diffusion(noise_schedule="quadratic")
