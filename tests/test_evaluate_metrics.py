"""Metric formulas against known answers and brute-force implementations (no models, fast)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinalign.evaluate import bootstrap as bs
from clinalign.evaluate.fid import (
    FrechetReference,
    fid,
    fid_to_stats,
    frechet_distance,
    frechet_distance_symmetric,
    gaussian_stats,
    mixture_stats,
)
from clinalign.evaluate.memorisation import copy_threshold
from clinalign.evaluate.prdc import knn_radii, nearest_neighbours, prdc
from clinalign.evaluate.sharpness import laplacian_variance, sharpness_summary

# ---------------------------------------------------------------------------------------------
# FID


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    assert abs(fid(x, x)) < 1e-6


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a, b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    # For diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_symmetric(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_fid_from_samples_approaches_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    x = rng.normal(size=(200_000, 3)) * np.sqrt(a)
    y = rng.normal(size=(200_000, 3)) * np.sqrt(b) + np.array([1.0, 0.0, -2.0])
    expected = 1.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid(x, y) == pytest.approx(expected, rel=0.02)


def test_fid_with_singular_covariances_is_finite_and_agrees_with_the_symmetric_form():
    rng = np.random.default_rng(3)
    few = rng.normal(size=(6, 32))  # 6 samples in 32 dimensions: covariance of rank 5
    many = rng.normal(size=(400, 32))
    many[:, :4] = 0.0  # dead features, as ReLU networks have
    value = fid(few, many)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(frechet_distance_symmetric(*gaussian_stats(few), *gaussian_stats(many)), rel=1e-3)


def test_cached_reference_gives_the_same_fid():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    ref = FrechetReference(*gaussian_stats(real))
    for shift in (0.0, 0.5, 3.0):
        fake = rng.normal(size=(100, 12)) @ rng.normal(size=(12, 12)) + shift
        assert ref.distance(fake) == pytest.approx(fid(fake, real), rel=1e-6)


def test_fid_at_the_samples_class_mix_removes_the_real_class_frequencies():
    """Real cells 9:1 over two classes, samples drawn from each class's own distribution 1:1: FID
    against the pooled real cells counts the mix, FID against the real classes at 1:1 does not."""
    rng = np.random.default_rng(0)
    means = {"a": np.zeros(3), "b": np.full(3, 4.0)}
    real = {c: means[c] + rng.normal(size=(n, 3)) for c, n in (("a", 9000), ("b", 1000))}
    stats = {c: gaussian_stats(x) for c, x in real.items()}
    pooled = gaussian_stats(np.concatenate(list(real.values())))
    even = np.concatenate([means[c] + rng.normal(size=(2000, 3)) for c in ("a", "b")])
    assert fid_to_stats(even, *pooled) > 3.0
    assert fid_to_stats(even, *mixture_stats(stats, {"a": 2000, "b": 2000})) < 0.05
    # at the real data's own counts the mixture is the pooled Gaussian (up to the n - 1 in each covariance)
    mu, sigma = mixture_stats(stats, {"a": 9000, "b": 1000})
    np.testing.assert_allclose(mu, pooled[0], atol=1e-12)
    np.testing.assert_allclose(sigma, pooled[1], atol=1e-3)
    assert mixture_stats(stats, {"a": 1, "zzz": 5})[0] == pytest.approx(
        stats["a"][0]
    )  # a class without real data is left out
    with pytest.raises(ValueError, match="no class"):
        mixture_stats(stats, {"zzz": 1})


def test_fid_needs_two_vectors():
    assert np.isnan(fid(np.zeros((1, 4)), np.zeros((10, 4))))


# ---------------------------------------------------------------------------------------------
# PRDC (Naeem et al. 2020), checked against a direct transcription of the paper's formulas


def brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=2)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=2)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=2)  # [j, i]
    r_real = np.sort(d_rr, axis=1)[:, k]
    r_fake = np.sort(d_ff, axis=1)[:, k]
    precision = np.mean([any(d_fr[j, i] < r_real[i] for i in range(len(real))) for j in range(len(fake))])
    recall = np.mean([any(d_fr[j, i] < r_fake[j] for j in range(len(fake))) for i in range(len(real))])
    density = sum(d_fr[j, i] < r_real[i] for j in range(len(fake)) for i in range(len(real))) / (k * len(fake))
    coverage = np.mean([d_fr[:, i].min() < r_real[i] for i in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_prdc_of_identical_sets():
    x = np.random.default_rng(0).normal(size=(200, 8))
    r = prdc(x, x.copy(), k=5)
    assert (r.precision, r.recall, r.coverage) == (1.0, 1.0, 1.0)
    assert r.in_manifold.all()


def test_prdc_of_far_apart_sets_is_zero():
    rng = np.random.default_rng(0)
    r = prdc(rng.normal(size=(100, 8)), rng.normal(size=(80, 8)) + 100.0, k=5)
    assert (r.precision, r.recall, r.density, r.coverage) == (0.0, 0.0, 0.0, 0.0)
    assert not r.in_manifold.any()


@settings(max_examples=25, deadline=None)
@given(
    n_real=st.integers(7, 40),
    n_fake=st.integers(7, 40),
    dim=st.integers(1, 6),
    shift=st.floats(0, 2),
    k=st.integers(1, 5),
    seed=st.integers(0, 10_000),
)
def test_prdc_matches_brute_force(n_real, n_fake, dim, shift, k, seed):
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(n_real, dim)), rng.normal(size=(n_fake, dim)) + shift
    got = prdc(real, fake, k=k).summary()
    want = brute_prdc(real, fake, k)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_prdc_chunking_gives_the_same_answer(monkeypatch):
    import clinalign.evaluate.prdc as prdc_module

    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(300, 5)), rng.normal(size=(250, 5)) + 0.3
    whole = prdc(real, fake, k=5).summary()
    monkeypatch.setattr(prdc_module, "_CHUNK_ELEMENTS", 1000)  # forces chunks of 3-4 rows
    assert prdc(real, fake, k=5).summary() == pytest.approx(whole)


def test_knn_radii_and_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(2)
    x, q = rng.normal(size=(60, 4)), rng.normal(size=(30, 4))
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    assert knn_radii(x, 3) == pytest.approx(np.sort(d, axis=1)[:, 3])
    dq = np.linalg.norm(q[:, None] - x[None], axis=2)
    nn = nearest_neighbours(q, x)
    assert (nn.index == dq.argmin(axis=1)).all()
    assert nn.distance == pytest.approx(dq.min(axis=1))


def test_knn_radii_rejects_k_too_large():
    with pytest.raises(ValueError):
        knn_radii(np.zeros((5, 2)), 5)


def test_copy_threshold_is_positive_even_with_duplicates():
    assert copy_threshold(np.array([0.0, 0.0, 1.0, 2.0, 3.0]), 1.0) == 1.0
    assert copy_threshold(np.linspace(1, 101, 101), 1.0) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_interval_covers_the_true_rate_about_95_percent_of_the_time():
    p, n, covered = 0.3, 400, 0
    for trial in range(200):
        x = np.random.default_rng(trial).random(n) < p
        lo, hi = bs.percentile_interval(bs.replicate_mean(x, 200, seed=trial))
        covered += lo <= p <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    x = np.random.default_rng(0).normal(5.0, 2.0, 1000)
    lo, hi = bs.percentile_interval(bs.replicate_mean(x, 2000, seed=0))
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.3 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.3 * se)


def test_bootstrap_is_seeded_and_generic_replicate_agrees_with_the_vectorised_mean():
    x = np.random.default_rng(0).random(50)
    assert np.array_equal(bs.replicate_mean(x, 100, 7), bs.replicate_mean(x, 100, 7))
    assert bs.replicate(lambda idx: x[idx].mean(), 50, 100, 7) == pytest.approx(bs.replicate_mean(x, 100, 7))


def test_bias_corrected_fid_interval_contains_the_estimate():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(2000, 16)), rng.normal(size=(80, 16)) + 0.1
    ref = FrechetReference(*gaussian_stats(real))
    value = ref.distance(fake)
    reps = bs.replicate(lambda idx: ref.distance(fake[idx]), len(fake), 200, seed=0)
    lo, hi = bs.percentile_interval(reps)
    assert value < lo  # resampling duplicates inflate FID: the plain interval misses the estimate
    lo_c, hi_c = bs.percentile_interval(reps, bias_from=value)
    assert lo_c < value < hi_c and hi_c - lo_c == pytest.approx(hi - lo)


def test_difference_interval_separates_different_rates_and_not_equal_ones():
    rng = np.random.default_rng(0)
    a, b, c = rng.random(500) < 0.7, rng.random(500) < 0.4, rng.random(500) < 0.7
    d = bs.difference(a.mean(), bs.replicate_mean(a, 300, 1), b.mean(), bs.replicate_mean(b, 300, 2))
    assert d.low > 0.15 and d.high < 0.45
    same = bs.difference(a.mean(), bs.replicate_mean(a, 300, 1), c.mean(), bs.replicate_mean(c, 300, 3))
    assert same.low < 0 < same.high


def test_laplacian_variance_of_flat_and_impulse_images_matches_hand_values():
    flat = np.full((1, 5, 5, 1), 77, np.uint8)
    impulse = np.zeros((1, 5, 5, 1), np.uint8)
    impulse[0, 2, 2, 0] = 100
    # The Laplacian is -400 at the centre and +100 at its four neighbours: variance (16 + 4) * 100^2 / 25.
    assert laplacian_variance(flat)[0] == 0.0
    assert laplacian_variance(impulse)[0] == pytest.approx(8000.0)
    assert laplacian_variance(np.repeat(impulse, 3, axis=3))[0] == pytest.approx(8000.0)  # grey as RGB


def test_blur_lowers_sharpness_and_the_summary_divides_by_the_real_median():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    pad = np.pad(sharp.astype(float), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(pad[:, i : i + 16, j : j + 16] for i in range(3) for j in range(3)) / 9
    v_sharp, v_blur = laplacian_variance(sharp), laplacian_variance(blurred.round().astype(np.uint8))
    assert (v_blur < v_sharp / 4).all()
    summary = sharpness_summary(v_blur, float(np.median(v_sharp)))
    assert summary["relative_to_real"] == pytest.approx(np.median(v_blur) / np.median(v_sharp))
    assert "relative_to_real" not in sharpness_summary(v_blur)
