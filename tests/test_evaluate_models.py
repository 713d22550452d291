"""The evaluation oracle, plausibility, memorisation, utility and the report, on real toy-cell training.

One small oracle is trained for the whole module (toy cells, 24 px, a few seconds).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from clinalign.data.toy import toy_class_map
from clinalign.errors import ConfigError, DataError
from clinalign.evaluate.data import ImageSet, half_of
from clinalign.evaluate.features import load_inception
from clinalign.evaluate.oracle import EvaluationModels, OracleConfig
from clinalign.evaluate.plausibility import RealReference, judge_images
from clinalign.evaluate.report import flatten
from clinalign.evaluate.run import MetricConfig, evaluate_samples, json_safe, lookup, write_outputs
from clinalign.evaluate.utility import UtilityConfig

SIZE = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a shared 2-core machine two OpenMP threads wait on each other most of the time; one
    # thread trains these tiny networks several times faster. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_set(per_class: int, seed: int, tag: str = "") -> ImageSet:
    return ImageSet.from_toy(4, per_class, SIZE, seed, id_suffix=tag)


@pytest.fixture(scope="module")
def real() -> ImageSet:
    return toy_set(200, seed=0)


@pytest.fixture(scope="module")
def models(real) -> EvaluationModels:
    return EvaluationModels.fit(real, config=OracleConfig(image_size=SIZE, epochs=20, width=16))


@pytest.fixture(scope="module")
def reference(models, real) -> RealReference:
    return RealReference.build(models, real)


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (120, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def result(models, real, reference, noise):
    """Fresh toy cells plus exact copies of training images, against a baseline of noise."""
    fresh = toy_set(12, seed=11, tag="-fresh")
    copies = reference.train.subset(np.arange(0, 400, 20))
    samples = fresh.concat(ImageSet.from_arrays(copies.images, copies.classes, [f"copy-{i}" for i in copies.ids]))
    baseline = ImageSet.from_arrays(noise[:48], fresh.classes, [f"noise-{i}" for i in fresh.ids])
    config = MetricConfig(bootstrap=100, utility=UtilityConfig(arch="vgg", width=8, steps=80, max_train=400))
    return evaluate_samples(
        models,
        real,
        samples,
        baseline=baseline,
        reference=reference,
        config=config,
        reward=lambda s: np.array([float(c == "neutrophil") for c in s.classes]),
    )


def test_oracle_is_trained_on_half_b_only_and_never_on_the_test_split(models, reference):
    ids = models.info["train_ids"]
    assert ids and all(half_of(i) == "B" for i in ids)
    assert not set(ids) & set(reference.test.ids)
    assert models.info["arch"] == "vgg" and models.info["half"] == "B"
    assert models.info["test_accuracy"] >= 0.9


def test_real_held_out_images_are_judged_plausible(models, reference):
    held = judge_images(models, reference, reference.test.images, reference.test.classes)
    assert held.plausible.mean() >= 0.8
    fresh = toy_set(15, seed=5, tag="-new")  # new cells, never seen by anything
    assert judge_images(models, reference, fresh.images, fresh.classes).plausible.mean() >= 0.8


def test_noise_is_implausible_even_where_the_oracle_is_confident(models, reference, noise):
    # Declare for each noise image the class the oracle itself prefers: the oracle alone accepts them.
    favourite = [models.class_map.names[i] for i in models.oracle_proba(noise).argmax(axis=1)]
    j = judge_images(models, reference, noise, favourite)
    assert j.recognised.mean() >= 0.5, "the oracle alone should be fooled here; the test lost its point"
    assert j.plausible.mean() <= 0.05
    assert j.in_manifold.mean() <= 0.05


def test_float_nchw_images_are_judged_like_uint8(models, reference):
    fresh = toy_set(3, seed=7)
    x = torch.from_numpy(fresh.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    a = judge_images(models, reference, fresh.images, fresh.classes)
    b = judge_images(models, reference, x, fresh.classes)
    assert np.allclose(a.p_declared, b.p_declared) and (a.in_manifold == b.in_manifold).all()


def test_memorisation_flags_exact_copies_and_not_fresh_images(result):
    s = result.sets["samples"]
    is_copy = np.array([i.startswith("copy-") for i in s.samples.ids])
    assert s.memorisation.near_copy_feature[is_copy].all()
    assert s.memorisation.near_copy_pixel[is_copy].all()
    assert s.memorisation.near_copy_feature[~is_copy].mean() <= 0.1
    assert s.memorisation.near_copy_pixel[~is_copy].mean() <= 0.1
    assert s.metrics["memorisation"]["feature"]["n_near_copies"] >= is_copy.sum()


def test_plausibility_prdc_and_comparison(result):
    s, b = result.metrics["sets"]["samples"], result.metrics["sets"]["baseline"]
    assert s["plausibility"]["rate"] >= 0.8 and b["plausibility"]["rate"] <= 0.05
    assert b["prdc"]["precision"] <= 0.05 and s["prdc"]["precision"] >= 0.8
    assert s["fid"] < b["fid"]
    assert s["fid_class_mix"] < b["fid_class_mix"] and s["fid_intra"] < b["fid_intra"]
    lo, hi = s["ci"]["fid_class_mix"]
    assert lo <= s["fid_class_mix"] <= hi
    assert s["fid_intra"] == pytest.approx(np.mean(list(s["fid_per_class"].values())))
    lo, hi = s["ci"]["plausibility.rate"]
    assert lo <= s["plausibility"]["rate"] <= hi
    c = result.metrics["comparison"]["plausibility.rate"]
    assert c["difference"] == pytest.approx(s["plausibility"]["rate"] - b["plausibility"]["rate"])
    assert lookup(result.samples.metrics, ("plausibility", "rate")) == s["plausibility"]["rate"]
    assert lookup(result.baseline.metrics, ("no", "such")) is None
    assert c["ci_low"] > 0.5  # clearly better than noise
    assert "fid" in result.metrics["comparison"] and "prdc.recall" in result.metrics["comparison"]
    assert s["reward"]["per_class"]["neutrophil"] == 1.0 and s["reward"]["per_class"]["monocyte"] == 0.0
    assert set(s["plausibility"]["per_class"]) == set(toy_class_map(4).names)


def test_tstr_real_only_is_high_on_toy_cells(result):
    u = result.metrics["sets"]["samples"]["utility"]
    assert u["real_only"]["accuracy"] >= 0.9
    assert u["synthetic_only"]["accuracy"] >= 0.6  # the "synthetic" set here is real-like toy cells
    assert result.metrics["sets"]["baseline"]["utility"]["real_only"] == u["real_only"]  # same seed, same data


def test_outputs_are_strict_json_and_a_self_contained_report_with_every_metric(result, tmp_path):
    paths = write_outputs(result, tmp_path)
    metrics = json.loads(paths["metrics"].read_text(), parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
    assert metrics == json_safe(result.metrics)
    page = paths["report"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<link" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") >= 10
    for key, _ in flatten({k: v for k, v in metrics.items() if k != "definitions"}):
        assert key in page, key
    assert "domain features" in page and "manifold" in page
    rows = paths["per_sample"].read_text().splitlines()
    assert len(rows) == 1 + sum(len(r.samples) for r in result.sets.values())


def test_fit_or_load_reuses_the_cached_models(real, tmp_path, monkeypatch):
    small = real.subset(np.arange(0, 800, 4))
    config = OracleConfig(image_size=16, epochs=1, width=4)
    first = EvaluationModels.fit_or_load(small, None, config, tmp_path)
    monkeypatch.setattr(EvaluationModels, "fit", classmethod(lambda *a, **k: pytest.fail("retrained")))
    again = EvaluationModels.fit_or_load(small, None, config, tmp_path)
    assert again.directory == first.directory and again.info == first.info
    x = small.at(16, 3).images[:8]
    assert np.allclose(again.oracle_proba(x), first.oracle_proba(x), atol=1e-6)
    monkeypatch.undo()
    EvaluationModels.fit_or_load(small, None, OracleConfig(image_size=16, epochs=2, width=4), tmp_path)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2  # other config, other key


def test_samples_declaring_an_unknown_class_are_refused(models, real, reference):
    bad = ImageSet.from_arrays(real.images[:3], ["neutrophil", "blast", "blast"], name="my_samples")
    with pytest.raises(DataError, match="blast"):
        evaluate_samples(models, real, bad, reference=reference, config=MetricConfig(bootstrap=0, utility=None))


def test_inception_path_torchscript_is_used_and_a_state_dict_is_refused(models, real, reference, tmp_path):
    class TinyInception(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            f = x.float().mean(dim=(2, 3))
            return torch.cat([f, f.square() / 255.0, x.float().amax(dim=(2, 3))], dim=1)

    ts = tmp_path / "inception.pt"
    torch.jit.script(TinyInception()).save(str(ts))
    models.inception = load_inception(ts)
    try:
        ref = RealReference.build(models, real)
        fresh = toy_set(5, seed=9)
        out = evaluate_samples(models, real, fresh, reference=ref, config=MetricConfig(bootstrap=0, utility=None))
        assert np.isfinite(out.metrics["sets"]["samples"]["fid_inception"])
    finally:
        models.inception = None
    sd = tmp_path / "pt_inception.pth"
    torch.save({"conv.weight": torch.zeros(1)}, sd)
    with pytest.raises(ConfigError, match="state dict"):
        load_inception(sd)


def test_reward_checkpoint_scores_at_the_reward_models_own_size(monkeypatch, tmp_path):
    import clinalign.reward
    from clinalign.evaluate.run import reward_scorer

    class FakeRewardModel:
        image_size = 8

        @classmethod
        def load(cls, directory):
            assert directory == tmp_path
            return cls()

        def score_names(self, x, class_names):
            assert x.shape[1:] == (3, 8, 8) and x.min() >= -1 and x.max() <= 1  # float NCHW at its own size
            return torch.tensor([len(c) for c in class_names], dtype=torch.float32)

    monkeypatch.setattr(clinalign.reward, "RewardModel", FakeRewardModel, raising=False)
    score = reward_scorer(tmp_path)
    fresh = toy_set(2, seed=3)
    assert list(score(fresh)) == [float(len(c)) for c in fresh.classes]


def test_mean_reward_with_a_real_reward_model_checkpoint(models, real, reference, tmp_path):
    """Integration with the reward stage's own RewardModel (untrained: the plumbing is the point)."""
    import clinalign.reward.model as reward_model
    from clinalign.evaluate.run import reward_scorer

    names = toy_class_map(4).names
    net = reward_model.RewardNet(len(names), 3, width=8, arch="resnet")
    reward_model.RewardModel(net.eval(), models.class_map, 1.0, 16, 3, {"arch": "resnet", "width": 8}).save(tmp_path)
    fresh = toy_set(3, seed=8)
    out = evaluate_samples(
        models,
        real,
        fresh,
        reference=reference,
        reward=reward_scorer(tmp_path),
        config=MetricConfig(bootstrap=10, utility=None),
    )
    r = out.samples.reward
    assert r is not None and len(r) == len(fresh) and ((r >= 0) & (r <= 1)).all()
    assert out.metrics["sets"]["samples"]["reward"]["mean"] == pytest.approx(r.mean())


def test_two_sets_from_the_same_seeds_are_compared_pair_by_pair(models, real, reference, noise):
    """Sample i of a finetune and of its control start from the same noise: the interval of their
    difference resamples the pairs, so swapping a few samples for noise moves it by those alone."""
    fresh = toy_set(12, seed=11, tag="-fresh")
    after = fresh.images.copy()
    after[:4] = noise[:4]  # four samples the 'finetune' broke, the rest identical
    changed = ImageSet.from_arrays(after, fresh.classes, fresh.ids)
    config = MetricConfig(bootstrap=200, utility=None)
    result = evaluate_samples(models, real, changed, baseline=fresh, reference=reference, config=config)
    d = result.metrics["comparison"]["plausibility.rate"]
    broke = result.sets["baseline"].judgement.plausible[:4].sum() / len(fresh)
    assert d["difference"] == pytest.approx(-broke) and broke > 0
    # paired, the 44 identical samples add no spread: only how many of the four a draw repeats moves
    # it, so the interval excludes 0 (resampled independently it spans about +-0.15 around -broke)
    assert -12 / 48 <= d["ci_low"] and d["ci_high"] < 0.0
