"""Timestep samplers: uniform and loss-second-moment importance sampling (iDDPM eq. 18)."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clinalign.diffusion import (
    LossSecondMomentResampler,
    UniformSampler,
    create_diffusion,
    create_named_schedule_sampler,
)
from clinalign.errors import CheckpointError


def fake_diffusion(T):
    return SimpleNamespace(num_timesteps=T)


def fill(sampler, T, history, rng):
    """Give every timestep a full history of losses ~ (t+1) · U(0.5, 1.5)."""
    for _ in range(history):
        ts = torch.arange(T)
        sampler.update_with_local_losses(ts, (ts + 1).double() * torch.from_numpy(rng.uniform(0.5, 1.5, T)))


def test_uniform_sampler():
    s = create_named_schedule_sampler("uniform", create_diffusion(steps=50))
    assert isinstance(s, UniformSampler)
    np.testing.assert_array_equal(s.weights(), np.ones(50))
    t, w = s.sample(1000, "cpu", generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and w.dtype == torch.float32 and t.shape == w.shape == (1000,)
    assert t.min() >= 0 and t.max() < 50 and len(t.unique()) > 40
    torch.testing.assert_close(w, torch.ones(1000))
    assert s.state_dict() == {}


def test_sampling_is_reproducible_by_seed():
    s = UniformSampler(fake_diffusion(100))
    a = s.sample(64, "cpu", generator=torch.Generator().manual_seed(3))[0]
    b = s.sample(64, "cpu", generator=torch.Generator().manual_seed(3))[0]
    c = s.sample(64, "cpu", generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_sampler_name():
    with pytest.raises(ValueError, match="uniform, loss-second-moment"):
        create_named_schedule_sampler("importance", fake_diffusion(10))


def test_loss_second_moment_is_uniform_until_every_history_is_full():
    T, H = 20, 4
    s = LossSecondMomentResampler(fake_diffusion(T), history_per_term=H)
    rng = np.random.default_rng(0)
    fill(s, T, H - 1, rng)
    s.update_with_local_losses(torch.arange(T - 1), torch.ones(T - 1))  # all but the last t full
    np.testing.assert_array_equal(s.weights(), np.ones(T))
    _, w = s.sample(10, "cpu")
    torch.testing.assert_close(w, torch.ones(10))
    s.update_with_local_losses(torch.tensor([T - 1]), torch.tensor([5.0]))
    assert not np.allclose(s.weights(), s.weights()[0])


def test_loss_second_moment_weights_and_importance_weights():
    T, H, u = 30, 5, 0.001
    s = LossSecondMomentResampler(fake_diffusion(T), history_per_term=H, uniform_prob=u)
    rng = np.random.default_rng(1)
    losses = rng.uniform(0.1, 3.0, size=(H, T)) * np.arange(1, T + 1)
    for row in losses:
        s.update_with_local_losses(torch.arange(T), torch.from_numpy(row))
    rms = np.sqrt(np.mean(losses**2, axis=0))
    expected = (1 - u) * rms / rms.sum() + u / T
    np.testing.assert_allclose(s.weights(), expected, rtol=1e-12)
    assert s.weights().sum() == pytest.approx(1.0)
    t, w = s.sample(500, "cpu", generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(w.numpy(), 1.0 / (T * expected[t.numpy()]), rtol=1e-6)
    # importance weighting keeps the objective unbiased: E_p[w · L_t] = mean_t L_t
    p = expected
    assert np.sum(p * (1.0 / (T * p)) * rms) == pytest.approx(rms.mean())
    # heavy timesteps are drawn more often
    assert (t >= T // 2).float().mean() > 0.6


def test_history_keeps_the_latest_losses():
    s = LossSecondMomentResampler(fake_diffusion(2), history_per_term=3)
    s.update_with_all_losses([0, 0, 0, 0, 0, 1, 1, 1], [1, 2, 3, 4, 5, 7, 7, 7])
    np.testing.assert_array_equal(s._loss_history[0], [3, 4, 5])
    rms0, rms1 = np.sqrt(np.mean(np.square([3, 4, 5]))), 7.0
    assert s.weights()[0] / s.weights()[1] == pytest.approx(
        (0.999 * rms0 / (rms0 + rms1) + 0.0005) / (0.999 * rms1 / (rms0 + rms1) + 0.0005)
    )


def test_state_dict_round_trip_resumes_identically(tmp_path):
    from safetensors.torch import load_file, save_file

    T, H = 16, 3
    a = LossSecondMomentResampler(fake_diffusion(T), history_per_term=H)
    rng = np.random.default_rng(2)
    fill(a, T, H + 1, rng)
    save_file(a.state_dict(), tmp_path / "sampler.safetensors")  # how a checkpoint stores it
    b = LossSecondMomentResampler(fake_diffusion(T), history_per_term=H)
    b.load_state_dict(load_file(tmp_path / "sampler.safetensors"))
    np.testing.assert_array_equal(a.weights(), b.weights())
    for s in (a, b):
        s.update_with_local_losses(torch.tensor([1, 2, 3]), torch.tensor([9.0, 8.0, 7.0]))
    np.testing.assert_array_equal(a.weights(), b.weights())
    ta = a.sample(32, "cpu", generator=torch.Generator().manual_seed(5))
    tb = b.sample(32, "cpu", generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(ta, tb))
    a.state_dict()["loss_history"][:] = 0  # the state is a copy
    assert a._loss_history.any()


def test_state_dict_from_another_config_is_refused():
    s = LossSecondMomentResampler(fake_diffusion(10))
    with pytest.raises(CheckpointError, match=r"\(10, 10\)"):
        s.load_state_dict(LossSecondMomentResampler(fake_diffusion(20)).state_dict())
    with pytest.raises(CheckpointError, match="loss_history"):
        s.load_state_dict({})


def _gather_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        s = LossSecondMomentResampler(fake_diffusion(8), history_per_term=2)
        # different batch sizes per rank: rank 0 sends 3 pairs, rank 1 sends 5
        ts = torch.arange(3) if rank == 0 else torch.arange(3, 8)
        s.update_with_local_losses(ts, (ts + 1).double() * (10**rank) + 1e-9)  # float64 survives
        np.save(os.path.join(out_dir, f"history{rank}.npy"), s._loss_history)
        np.save(os.path.join(out_dir, f"counts{rank}.npy"), s._loss_counts)
    finally:
        dist.destroy_process_group()


def test_update_all_gathers_variable_batches_across_ranks(tmp_path):
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    h0, h1 = np.load(tmp_path / "history0.npy"), np.load(tmp_path / "history1.npy")
    np.testing.assert_array_equal(h0, h1)  # every rank applies the same update
    np.testing.assert_array_equal(h0[:, 0], np.array([1, 2, 3, 40, 50, 60, 70, 80]) + 1e-9)
    np.testing.assert_array_equal(np.load(tmp_path / "counts0.npy"), np.ones(8))
