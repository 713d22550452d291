"""v-prediction and min-SNR-γ weighting against closed forms on Gaussian data.

For x_0 ~ N(μ, s²) per pixel the exact ε-prediction is E[ε | x_t] (see test_diffusion_samplers),
from which the exact x_0- and v-predictions follow; a v-model built from it must sample the data's
mean and standard deviation, and the training targets and weights must be the papers' formulas.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinalign.diffusion import ModelMeanType, create_diffusion, sample_images
from clinalign.errors import ConfigError

from .test_diffusion_samplers import MU, SHAPE, S, oracle, stats


def v_oracle(diffusion):
    """Exact v = √ᾱ ε − √(1 − ᾱ) x_0 from the exact ε (and x_0 = (x_t − √(1 − ᾱ) ε)/√ᾱ)."""
    eps_model = oracle(diffusion)
    abar = torch.from_numpy(np.cumprod(1 - diffusion.betas))

    def model(x, t):
        a = abar[t].to(x).view(-1, 1, 1, 1)
        eps = eps_model(x, t)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return model


@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpm++", 20), ("ancestral", 100)])
def test_a_v_predicting_model_samples_the_data(sampler, steps):
    d = create_diffusion(steps=1000, noise_schedule="cosine", prediction="v")
    assert d.model_mean_type == ModelMeanType.VELOCITY
    x = sample_images(
        v_oracle(d),
        d,
        SHAPE,
        sampler=sampler,
        steps=steps,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(0),
    )
    mean, std = stats(x)
    assert mean == pytest.approx(MU, abs=0.02)
    assert std == pytest.approx(S, rel=0.08)


def test_v_target_and_its_inversions_are_the_papers():
    d = create_diffusion(steps=100, noise_schedule="cosine", prediction="v")
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, 1, 3, 3, generator=g)
    t = torch.tensor([0, 10, 50, 99])
    a = torch.from_numpy(d.alphas_cumprod)[t].view(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(d._v_target(x0, t, noise).float(), v.float())
    x_t = d.q_sample(x0, t, noise=noise)
    torch.testing.assert_close(d._predict_xstart_from_v(x_t, t, v).float(), x0)
    # the loss is the MSE to that target: a model that outputs it exactly has zero loss
    loss = d.training_losses(lambda x, tt: v.to(x), x0, t, noise=noise)["loss"]
    torch.testing.assert_close(loss, torch.zeros(4, dtype=loss.dtype), atol=1e-10, rtol=0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weights_are_the_closed_form(prediction):
    gamma = 5.0
    d = create_diffusion(steps=1000, noise_schedule="cosine", prediction=prediction, snr_gamma=gamma)
    t = torch.tensor([0, 300, 600, 900, 999])
    snr = torch.from_numpy(d.alphas_cumprod / (1 - d.alphas_cumprod))[t]
    assert (snr > gamma).any() and (snr < gamma).any(), "both sides of the clip are tested"
    clipped = snr.clamp(max=gamma)
    expected = {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}[prediction]
    torch.testing.assert_close(d.snr_weights(t), expected.float())
    # and the training loss is that weight times the plain MSE (a zero model makes the MSE the target's)
    plain = create_diffusion(steps=1000, noise_schedule="cosine", prediction=prediction)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    weighted = d.training_losses(zero, x0, t, noise=noise)["loss"]
    unweighted = plain.training_losses(zero, x0, t, noise=noise)["loss"]
    torch.testing.assert_close(weighted, unweighted * expected.to(unweighted.dtype))


def test_prediction_defaults_keep_the_seed_flags_meaning():
    def make(**kw):
        return create_diffusion(steps=50, noise_schedule="cosine", **kw)

    assert make().model_mean_type == ModelMeanType.EPSILON
    assert make(predict_xstart=True).model_mean_type == ModelMeanType.START_X
    assert make(predict_xstart=True, prediction="x0").model_mean_type == ModelMeanType.START_X
    with pytest.raises(ConfigError, match="contradicts"):
        make(predict_xstart=True, prediction="v")


def test_a_checkpoint_from_before_keeps_its_objective():
    from clinalign.training.checkpoint import find_checkpoint

    from .test_old_checkpoints import OLD_RUN

    ck = find_checkpoint(OLD_RUN)
    assert "prediction" not in ck.meta["diffusion"] and "snr_gamma" not in ck.meta["diffusion"]
    d = ck.build_diffusion()
    assert d.model_mean_type == ModelMeanType.EPSILON and d.snr_gamma == 0.0


def test_train_with_v_prediction_and_min_snr_records_them(toy_dir, tmp_path):
    from clinalign.cli import main
    from clinalign.training.checkpoint import find_checkpoint

    from .conftest import TINY_DIFFUSION, TINY_MODEL

    run = tmp_path / "v"
    assert (
        main(
            [
                "train",
                "--data_dir",
                str(toy_dir),
                "--run_dir",
                str(run),
                *TINY_MODEL,
                *TINY_DIFFUSION,
                "--class_cond",
                "True",
                "--batch_size",
                "4",
                "--max_steps",
                "2",
                "--prediction",
                "v",
                "--snr_gamma",
                "5",
            ]
        )
        == 0
    )
    ck = find_checkpoint(run)
    assert ck.diffusion.prediction == "v" and ck.diffusion.snr_gamma == 5.0
    assert ck.build_diffusion().model_mean_type == ModelMeanType.VELOCITY
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run),
                "--num_samples",
                "2",
                "--sampler",
                "ddim",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
