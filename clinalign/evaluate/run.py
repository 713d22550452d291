"""The evaluation stage: fidelity, plausibility, utility and memorisation of synthetic images.

In memory (the demo, notebooks)::

    models = EvaluationModels.fit(real, test=None, config=OracleConfig(epochs=10))
    result = evaluate_samples(models, real, samples, baseline=before)   # EvaluationResult
    write_outputs(result, "out/")                                        # metrics.json, report.html

From folders (the CLI): :func:`evaluate`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.classmap import ClassMap
from ..data.folder import images_to_tensor
from ..errors import DataError
from ..utils.config import option
from ..utils.fileio import atomic_writer
from . import bootstrap as bs
from .checklist import CRITERIA, ChecklistVerdict
from .data import ImageSet, RealData, as_image_set, class_counts, derived_seed
from .features import load_feature_checkpoint, load_inception
from .fid import FrechetReference, fid, fid_to_stats, mixture_stats
from .memorisation import CopyReference, Memorisation, memorisation
from .oracle import EvaluationModels, OracleConfig
from .plausibility import Judgement, RealReference, judge, summarise
from .prdc import ManifoldResult, prdc
from .sharpness import laplacian_variance, sharpness_summary
from .utility import UtilityConfig, real_only, tstr

log = logging.getLogger(__name__)

# Below this real held-out accuracy the oracle is too weak an instrument to tell samples apart.
ORACLE_MIN_ACCURACY = 0.9

RewardFn = Callable[[ImageSet], np.ndarray]

DEFINITIONS = {
    "plausible": "the evaluation oracle gives the declared class probability >= tau (class-consistent, "
    "'oracle_rate') AND the sample's domain features lie inside the k-NN ball (k = 5) of at least one real "
    "training image (on-manifold, 'manifold_rate') AND every clinical checklist criterion is within the declared "
    "class's real range ('checklist_rate'; unless the checklist is turned off)",
    "checklist": "clinical criteria measured from the pixels (cell size, nucleus/cell ratio, nucleus lobes, "
    "chromatin brightness, cytoplasm hue, cytoplasm granules), each within the range real cells of the "
    "declared class show (their [q, 1 - q] percentiles, calibrated on the real training images); 'all' "
    "is every criterion at once",
    "oracle": "an independent classifier (VGG, its own seed) trained on real half B only; the simulated "
    "expert is a ResNet trained on half A (halves by a hash of the file name)",
    "fid": "Fréchet distance computed on domain features (the oracle's penultimate layer, or a given "
    "classifier), not Inception-v3; comparable only between sets evaluated with the same models",
    "fid_class_mix": "FID against the real features at the samples' declared class mix (a mixture of the "
    "per-class real Gaussians weighted by the samples' class counts). 'fid' compares with the real "
    "data's own class frequencies, which a set drawn evenly over imbalanced classes differs from in its "
    "mix alone",
    "fid_intra": "mean over the declared classes of each class's FID against that class's real images "
    "(intra-FID, Miyato & Koyama 2018); biased upward at small per-class counts, so compare sets of equal size",
    "sharpness": "median variance of the 4-neighbour Laplacian of the grey levels at the evaluation size; "
    "'relative_to_real' divides it by the real test images' median (blur lowers it, noise raises it)",
    "prdc": "precision / recall / density / coverage of Naeem et al. 2020 with k = 5 on the same features",
    "near_copy": "sample closer to its nearest real training image than the 1st percentile of real test -> "
    "real train nearest-neighbour distances",
    "utility": "TSTR: classifiers trained on real only / synthetic only / real + synthetic, tested on real "
    "held-out images",
    "ci": "95 % percentile bootstrap over samples (real data fixed); FID intervals are shifted by the bootstrap "
    "bias estimate, because resampling with replacement inflates FID",
}


@dataclass
class MetricConfig:
    """How sample sets are scored (none of it changes the cached models)."""

    tau: float = option(0.5, "oracle probability of the declared class needed")
    k: int = option(5, "neighbours for the k-NN manifold (PRDC)")
    max_reference: int = option(10000, "real images spanning the manifold (stratified subsample)")
    bootstrap: int = option(200, "bootstrap draws for the intervals (0 = none)")
    level: float = option(0.95, "interval level", flag=False)
    copy_percentile: float = option(1.0, "near copy: closer than this percentile of real-to-real distances", flag=False)
    # The clinical checklist is part of plausibility (single-cell images); each range spans real
    # cells' [q, 1 - q] percentiles, so a real cell fails a criterion with probability ~2q.
    checklist: bool = option(
        True, "the clinical checklist is part of plausibility (single-cell images; False for other data)"
    )
    checklist_quantile: float = option(0.005, "each checklist range spans real cells' [q, 1 - q] percentiles")
    seed: int = option(0, flag=False)
    utility: UtilityConfig | None = field(default_factory=UtilityConfig)  # None: skip TSTR

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise DataError(f"--tau must be in [0, 1], got {self.tau}")
        if self.k < 1:
            raise DataError(f"--k must be positive, got {self.k}")


@dataclass
class SetResult:
    """One sample set: its images, per-sample outcomes and its metrics (what the report draws)."""

    name: str
    samples: ImageSet  # at the evaluation models' size
    features: np.ndarray
    judgement: Judgement
    manifold: ManifoldResult
    memorisation: Memorisation
    reward: np.ndarray | None
    metrics: dict[str, Any]
    checklist: ChecklistVerdict | None = None
    # Bootstrap replicates by metric path, e.g. ("plausibility", "per_class", "neutrophil", "rate").
    replicates: dict[tuple[str, ...], np.ndarray] = field(repr=False, default_factory=dict)


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    sets: dict[str, SetResult]
    reference: RealReference
    copies: CopyReference
    models: EvaluationModels

    @property
    def samples(self) -> SetResult:
        return self.sets["samples"]

    @property
    def baseline(self) -> SetResult | None:
        return self.sets.get("baseline")


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _score_set(
    name: str,
    samples: ImageSet,
    models: EvaluationModels,
    ref: RealReference,
    copies: CopyReference,
    config: MetricConfig,
    reward: RewardFn | None,
    utility_baseline: dict | None,
    progress: bool,
) -> SetResult:
    start = time.perf_counter()
    unknown = sorted(set(samples.classes) - set(models.class_map.names))
    if unknown:
        raise DataError(
            f"{samples.name or name}: declares class(es) {', '.join(unknown)} that the real data does "
            f"not have (real classes: {', '.join(models.class_map.names)}); rename those files"
        )
    s = samples.at(models.image_size, models.channels)
    feats = models.embed(s.images)
    man = prdc(ref.reference_features, feats, config.k, ref.radii)
    checklist = ref.checklist.judge(s.images, s.classes)
    on = checklist.plausible if config.checklist else None
    j = judge(models, models.oracle_proba(s.images), s.classes, man.in_manifold, config.tau, on)
    mem = memorisation(feats, s.images, ref, copies)
    rewards = None if reward is None else np.asarray(reward(samples), dtype=np.float64).reshape(-1)
    if rewards is not None and len(rewards) != len(s):
        raise ValueError(f"reward model returned {len(rewards)} scores for {len(s)} images")
    result = SetResult(name, s, feats, j, man, mem, rewards, {}, checklist)
    result.metrics = _set_metrics(result, models, ref, copies)
    if config.utility is not None:
        result.metrics["utility"] = tstr(
            s, ref.train, ref.test, models.class_map, config.utility, utility_baseline, progress
        )
    _bootstrap(result, ref, config)
    m = result.metrics
    m["seconds"] = round(time.perf_counter() - start, 2)
    log.info(
        "%s: %d samples, plausible %.3f (class-consistent %.3f, on-manifold %.3f, checklist %.3f), FID %.2f",
        name,
        len(s),
        m["plausibility"]["rate"],
        m["plausibility"]["oracle_rate"],
        m["plausibility"]["manifold_rate"],
        m["checklist"]["all"],
        m["fid"],
    )
    return result


def _set_metrics(r: SetResult, models: EvaluationModels, ref: RealReference, copies: CopyReference) -> dict:
    """Every metric of one set that is not bootstrapped: FID (overall, per class), PRDC, the verdicts' rates."""
    classes = np.asarray(r.samples.classes, dtype=object)
    names = sorted(set(r.samples.classes))
    m: dict[str, Any] = {"n": len(r.samples), "class_counts": class_counts(r.samples.classes)}
    m["fid"] = fid_to_stats(r.features, *ref.stats)
    mixed = class_mix_reference(r, ref)
    m["fid_class_mix"] = float("nan") if mixed is None else fid_to_stats(r.features[mixed[0]], *mixed[1])
    m["fid_per_class"] = {
        c: (fid_to_stats(r.features[classes == c], *ref.class_stats[c]) if c in ref.class_stats else float("nan"))
        for c in names
    }
    finite = [v for v in m["fid_per_class"].values() if np.isfinite(v)]
    m["fid_intra"] = float(np.mean(finite)) if finite else float("nan")
    if models.inception is not None:
        m["fid_inception"] = fid_to_stats(models.inception(r.samples.images), *ref.inception_stats)
    m["prdc"] = r.manifold.summary()
    m["plausibility"] = summarise(r.judgement)
    m["checklist"] = r.checklist.summary()
    m["sharpness"] = sharpness_summary(laplacian_variance(r.samples.images), ref.test_sharpness)
    if r.reward is not None:
        m["reward"] = {"mean": _mean(r.reward), "per_class": {c: _mean(r.reward[classes == c]) for c in names}}
    m["memorisation"] = r.memorisation.summary(copies)
    return m


def class_mix_reference(r: SetResult, ref: RealReference) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None:
    """(the rows of ``r`` whose class has real statistics, the real Gaussian at those rows' class mix),
    or None when no row has; the mix is the set's design, so bootstrap draws keep this reference."""
    classes = np.asarray(r.samples.classes, dtype=object)
    rows = np.flatnonzero([c in ref.class_stats for c in classes])
    if len(rows) < 2:
        return None
    counts = class_counts(classes[rows].tolist())
    return rows, mixture_stats(ref.class_stats, {c: float(n) for c, n in counts.items()})


def _bootstrap(r: SetResult, ref: RealReference, config: MetricConfig) -> None:
    """Intervals of the per-sample means (and FID recomputed per draw) into ``r.metrics['ci']``."""
    j, man, m = r.judgement, r.manifold, r.metrics
    # One seed for every set: sets of one size share the resampling indices, so two sets sampled
    # from the same noise (every column of a comparison; before/after finetuning) are compared
    # pair by pair (see bootstrap.py).
    seed = derived_seed("bootstrap", config.seed)
    per_sample: dict[tuple[str, ...], np.ndarray] = {
        ("plausibility", "rate"): j.plausible,
        ("plausibility", "oracle_rate"): j.recognised,
        ("plausibility", "manifold_rate"): j.in_manifold,
        ("plausibility", "mean_p_declared"): j.p_declared,
        ("prdc", "precision"): man.in_manifold,
        ("prdc", "density"): man.ball_count / config.k,
        ("checklist", "all"): r.checklist.plausible,
        ("memorisation", "feature", "near_copy_fraction"): r.memorisation.near_copy_feature,
    }
    if r.reward is not None:
        per_sample[("reward", "mean")] = r.reward
    classes = np.asarray(r.samples.classes, dtype=object)
    for c in sorted(set(r.samples.classes)):
        per_sample[("plausibility", "per_class", c, "rate")] = j.plausible[classes == c]
    reps = {key: bs.replicate_mean(v, config.bootstrap, seed) for key, v in per_sample.items()}
    if config.bootstrap:
        real_stats = FrechetReference(*ref.stats)  # the same d² as fid_to_stats, fast for many draws
        reps[("fid",)] = bs.replicate(
            lambda idx: real_stats.distance(r.features[idx]), len(classes), config.bootstrap, seed
        )
        mixed = class_mix_reference(r, ref)
        if mixed is not None:
            rows, mix_stats = mixed[0], FrechetReference(*mixed[1])
            reps[("fid_class_mix",)] = bs.replicate(
                lambda idx: mix_stats.distance(r.features[rows[idx]]), len(rows), config.bootstrap, seed
            )
    m["ci"] = {".".join(key): list(bs.percentile_interval(v, config.level)) for key, v in reps.items()}
    for key in ("fid", "fid_class_mix"):
        if (key,) in reps:
            lo, hi = bs.percentile_interval(reps[(key,)], config.level, bias_from=m[key])  # see bootstrap.py
            m["ci"][key] = [max(lo, 0.0), max(hi, 0.0)]
    r.replicates = reps


def lookup(metrics: dict, path: tuple[str, ...]) -> float | None:
    """``metrics[path[0]][path[1]]...`` as a float, or None where the path does not exist.

    E.g. ``lookup(result.samples.metrics, ("plausibility", "rate"))``.
    """
    value: Any = metrics
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value)


def _compare(a: SetResult, b: SetResult, level: float) -> dict[str, dict[str, float]]:
    """Each metric of ``a`` minus ``b``; bootstrapped ones with the interval of the difference."""
    out: dict[str, dict[str, float]] = {}
    for key in sorted(set(a.replicates) & set(b.replicates)):
        va, vb = lookup(a.metrics, key), lookup(b.metrics, key)
        d = bs.difference(va, a.replicates[key], vb, b.replicates[key], level, bias_correct=key == ("fid",))
        out[".".join(key)] = {a.name: va, b.name: vb, "difference": d.value, "ci_low": d.low, "ci_high": d.high}
    for key in (
        ("prdc", "recall"),
        ("prdc", "coverage"),
        ("utility", "synthetic_only", "accuracy"),
        ("utility", "real_plus_synthetic", "accuracy"),
    ):
        va, vb = lookup(a.metrics, key), lookup(b.metrics, key)
        if va is not None and vb is not None:
            out[".".join(key)] = {a.name: va, b.name: vb, "difference": va - vb}
    return out


def _real_metrics(models: EvaluationModels, ref: RealReference, copies: CopyReference, config: MetricConfig) -> dict:
    real_checklist = ref.checklist.judge(ref.test.images, ref.test.classes)
    j = judge(
        models,
        ref.test_proba,
        ref.test.classes,
        ref.test_manifold.in_manifold,
        config.tau,
        real_checklist.plausible if config.checklist else None,
    )
    accuracy = models.info.get("test_accuracy")
    warnings = []
    if accuracy is not None and accuracy < ORACLE_MIN_ACCURACY:
        warnings.append(
            f"the evaluation oracle reaches only {accuracy:.3f} accuracy on real held-out images (below "
            f"{ORACLE_MIN_ACCURACY}): its plausibility figures cannot tell good samples from bad; train "
            "it longer (--epochs), wider (--width) or on more real images"
        )
    for w in warnings:
        log.warning("%s", w)
    return {
        "warnings": warnings,
        "n_train": len(ref.train),
        "n_test": len(ref.test),
        "n_reference": len(ref.reference_index),
        "n_generator_train": len(ref.generator),
        "generator_train": ref.generator.name,
        "classes": models.class_map.names,
        "class_counts_train": class_counts(ref.train.classes),
        "image_size": models.image_size,
        "channels": models.channels,
        "oracle": {
            key: models.info.get(key)
            for key in (
                "arch",
                "half",
                "seed",
                "n_train",
                "val_accuracy",
                "test_accuracy",
                "test_balanced_accuracy",
                "fit_seconds",
            )
        },
        "feature_extractor": models.features.source,
        # What real held-out images score: the ceiling for plausibility, the floor for FID.
        "real_test": {
            "plausibility": summarise(j),
            "prdc": ref.test_manifold.summary(),
            "checklist": real_checklist.summary(),
            "sharpness": {"median": ref.test_sharpness},
            "fid_vs_train": fid(ref.test_features, ref.train_features),
        },
        "copy_thresholds": {"feature": copies.threshold_feature, "pixel": copies.threshold_pixel},
    }


def evaluate_samples(
    models: EvaluationModels,
    real: RealData,
    samples: RealData,
    baseline: RealData | None = None,
    test: RealData | None = None,
    reward: RewardFn | None = None,
    config: MetricConfig | None = None,
    reference: RealReference | None = None,
    progress: bool = False,
    generator: RealData | None = None,
) -> EvaluationResult:
    """Score ``samples`` (and ``baseline``, side by side with differences) against the real data.

    Image sets may be ImageSets or ``(uint8 NHWC images, class names[, ids])``. ``real``/``test``
    must be what ``models`` was fitted with. ``reward(image_set) -> scores`` adds the mean reward.
    Pass a prebuilt ``reference`` (``RealReference.build``) to score many sets against the same
    real data without re-embedding it. ``generator``: the generator's training images, when they
    are not ``real`` (see :meth:`RealReference.build`).
    """
    config = config or MetricConfig()
    samples = as_image_set(samples)
    baseline = None if baseline is None else as_image_set(baseline)
    start = time.perf_counter()
    ref = reference or RealReference.build(
        models, real, test, config.k, config.max_reference, config.seed, generator, config.checklist_quantile
    )
    copies = CopyReference.build(ref, config.copy_percentile)
    utility_baseline = (
        None
        if config.utility is None
        else real_only(ref.train, ref.test, models.class_map, config.utility, models.directory, progress)
    )
    sets = {"samples": _score_set("samples", samples, models, ref, copies, config, reward, utility_baseline, progress)}
    if baseline is not None:
        sets["baseline"] = _score_set(
            "baseline", baseline, models, ref, copies, config, reward, utility_baseline, progress
        )
    metrics: dict[str, Any] = {
        "definitions": DEFINITIONS,
        "config": {"metrics": _config_dict(config), "models": asdict(models.config)},
        "real": _real_metrics(models, ref, copies, config),
        "sets": {name: r.metrics for name, r in sets.items()},
    }
    if baseline is not None:
        metrics["comparison"] = _compare(sets["samples"], sets["baseline"], config.level)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    return EvaluationResult(metrics, sets, ref, copies, models)


def _config_dict(config: MetricConfig) -> dict:
    d = asdict(config)
    d["utility"] = None if config.utility is None else asdict(config.utility)
    return d


# ---------------------------------------------------------------------------------------------
# Output files


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_metrics(result: EvaluationResult, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "metrics.json"
    with atomic_writer(path, "w") as f:
        json.dump(json_safe(result.metrics), f, indent=2, allow_nan=False)
    return path


def write_per_sample(result: EvaluationResult, out_dir: str | Path) -> Path:
    """``per_sample.csv``: every sample's verdict components, nearest real images and reward."""
    path = Path(out_dir) / "per_sample.csv"
    train_ids = result.reference.generator.ids
    with atomic_writer(path, "w") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "set",
                "ID",
                "class",
                "p_declared",
                "oracle_class",
                "in_manifold",
                "plausible",
                "nn_feature_distance",
                "nn_feature_real",
                "near_copy_feature",
                "nn_pixel_distance",
                "nn_pixel_real",
                "near_copy_pixel",
                "reward",
                "checklist_failed",
            ]
        )
        for r in result.sets.values():
            j, mem = r.judgement, r.memorisation
            for i, sid in enumerate(r.samples.ids):
                w.writerow(
                    [
                        r.name,
                        sid,
                        j.classes[i],
                        f"{j.p_declared[i]:.6f}",
                        j.predicted[i],
                        int(j.in_manifold[i]),
                        int(j.plausible[i]),
                        f"{mem.feature.distance[i]:.6g}",
                        train_ids[mem.feature.index[i]],
                        int(mem.near_copy_feature[i]),
                        f"{mem.pixel.distance[i]:.6g}",
                        train_ids[mem.pixel.index[i]],
                        int(mem.near_copy_pixel[i]),
                        "" if r.reward is None else f"{r.reward[i]:.6g}",
                        ""
                        if r.checklist is None
                        else " ".join(c for c, ok in zip(CRITERIA, r.checklist.passed[i]) if not ok),
                    ]
                )
    return path


def write_outputs(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """metrics.json, per_sample.csv and the self-contained report.html in ``out_dir``."""
    from .report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "metrics": write_metrics(result, out),
        "per_sample": write_per_sample(result, out),
        "report": write_report(result, out),
    }


# ---------------------------------------------------------------------------------------------
# From folders


def reward_scorer(checkpoint: str | Path) -> RewardFn:
    """``RewardModel.load(dir).score_names(x, class_names)`` as a scorer of image sets.

    ``x`` is float NCHW in [-1, 1], decoded at the reward model's ``image_size`` / ``channels``
    when it declares them (from the files, when the set has any).
    """
    from ..reward import RewardModel

    model = RewardModel.load(checkpoint)
    size, channels = getattr(model, "image_size", None), getattr(model, "channels", None)

    @torch.no_grad()
    def score(samples: ImageSet) -> np.ndarray:
        s = samples.at(int(size or samples.image_size), int(channels or samples.channels))
        out = model.score_names(images_to_tensor(s.images), s.classes)
        return torch.as_tensor(out).detach().cpu().double().numpy().reshape(-1)

    return score


def read_samples(folder: str | Path, size: int, channels: int, class_map: ClassMap, skip_bad: bool) -> ImageSet:
    """A sample folder; samples of a concept (``concepts.json`` beside them) are judged as its real ancestor.

    A concept has no real images to compare with: a ``neutrophil-band`` sample is plausible when
    it is a plausible neutrophil; whether it shows the band subtype is concept accuracy
    (:mod:`clinalign.evaluate.concepts`).
    """
    from ..data.concepts import CONCEPTS_FILE, concept_parents
    from ..data.naming import declared_classes, list_images

    folder = Path(folder)
    if not (folder / CONCEPTS_FILE).exists():  # an unknown class then fails naming its first file
        return ImageSet.from_folder(folder, size, channels, class_map, skip_bad)
    declared = set(declared_classes(list_images(folder), folder))
    parents = concept_parents(folder, class_map.names, classes=declared)
    if not parents:
        return ImageSet.from_folder(folder, size, channels, class_map, skip_bad)
    s = ImageSet.from_folder(folder, size, channels, None, skip_bad)

    def ancestor(c: str) -> str:
        while c in parents:
            c = parents[c]
        return c

    log.info("%s: judging %s as their parent classes", folder, ", ".join(sorted(parents)))
    return ImageSet(s.images, [ancestor(c) for c in s.classes], s.ids, s.paths, s.name)


class Evaluator:
    """The real data, its evaluation models and real reference, set up once to judge many sample folders.

    The models are fitted (or reused from ``models_dir``) on the first :meth:`judge`, after its
    folders have been read, so a misnamed sample file fails in seconds rather than after training;
    the real reference (features, k-NN radii, FID statistics) is built once and shared.
    """

    def __init__(
        self,
        real: str | Path,
        real_test: str | Path | None = None,
        *,
        models_dir: str | Path,
        generator_data: str | Path | None = None,
        pools: dict[str, Any] | None = None,
        oracle_config: OracleConfig | None = None,
        metric_config: MetricConfig | None = None,
        reward_checkpoint: str | Path | None = None,
        inception: str | Path | None = None,
        feature_checkpoint: str | Path | None = None,
        skip_bad_images: bool = False,
        progress: bool = False,
    ):
        self.oracle_config = oracle_config or OracleConfig()
        self.metric_config = metric_config or MetricConfig()
        self.models_dir, self.progress, self.skip_bad = Path(models_dir), progress, skip_bad_images
        self.inception, self.feature_checkpoint = inception, feature_checkpoint
        size = self.oracle_config.image_size
        self.real = ImageSet.from_folder(real, size, skip_bad_images=skip_bad_images)
        self.test = (
            None
            if real_test is None
            else ImageSet.from_folder(real_test, size, self.real.channels, skip_bad_images=skip_bad_images)
        )
        self.class_map = ClassMap.from_labels(self.real.classes + (self.test.classes if self.test else []))
        self.generator = (
            None
            if generator_data is None
            else ImageSet.from_folder(generator_data, size, self.real.channels, skip_bad_images=skip_bad_images)
        )
        self.reward = reward_scorer(reward_checkpoint) if reward_checkpoint else None
        self.pools = pools
        self._models: EvaluationModels | None = None
        self._reference: RealReference | None = None

    @property
    def models(self) -> EvaluationModels:
        if self._models is None:
            models = EvaluationModels.fit_or_load(
                self.real, self.test, self.oracle_config, self.models_dir, self.progress
            )
            if self.feature_checkpoint:
                models.features = load_feature_checkpoint(self.feature_checkpoint)
            if self.inception:
                models.inception = load_inception(self.inception)
            self._models = models
        return self._models

    def read(self, folder: str | Path) -> ImageSet:
        return read_samples(folder, self.oracle_config.image_size, self.real.channels, self.class_map, self.skip_bad)

    def judge(self, samples: str | Path, baseline: str | Path | None = None) -> EvaluationResult:
        sample_set = self.read(samples)
        base_set = None if baseline is None else self.read(baseline)
        result = evaluate_samples(
            self.models,
            self.real,
            sample_set,
            base_set,
            self.test,
            self.reward,
            self.metric_config,
            reference=self._reference,
            progress=self.progress,
            generator=self.generator,
        )
        self._reference = result.reference
        if self.pools:
            result.metrics["real"]["pools"] = self.pools
        return result


def evaluate(
    real: str | Path, samples: str | Path, out: str | Path, baseline: str | Path | None = None, **options: Any
) -> EvaluationResult:
    """Load the folders, fit (or reuse) the evaluation models, score, and write the outputs to ``out``.

    ``options``: :class:`Evaluator`'s keyword arguments (``models_dir`` defaults to ``OUT/models``).
    """
    out = Path(out)
    options["models_dir"] = options.get("models_dir") or out / "models"
    evaluator = Evaluator(real, **options)
    result = evaluator.judge(samples, baseline)
    write_outputs(result, out)
    return result
