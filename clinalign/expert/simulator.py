"""A simulated expert: judges synthetic images plausible / implausible for their declared class.

For development, and for users who want to run the whole loop before their pathologists do. The
expert Γ_sim is its own classifier trained on real images, and a synthetic image is judged

    plausible  iff  P_expert(declared class | image) >= tau

with a strictness ``tau``, after which each verdict is flipped with probability ``noise`` (seeded),
to mimic disagreement between readers. Verdicts are written in the seed's feedback layout
(``CLASS/align`` and ``CLASS/notalign``, file names kept) plus ``judgements.csv``.

The expert is never the evaluation oracle: it is a ``resnet`` (the oracle a ``vgg``), seeded with
``derived_seed("expert", seed)`` and trained on real half A only (the oracle on half B), where the
halves come from a hash of each file name (:mod:`clinalign.evaluate.data`).
:func:`clinalign.evaluate.oracle.check_independent` asserts all three.

The label a classifier is trained on is pluggable: ``label_from="subtype"`` trains on finer labels
(the second ``_`` token of the file name, e.g. ``neutrophil_BNE_123.jpg`` -> ``neutrophil:BNE``), and
P(declared class) is then the sum over the class's subtypes.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.folder import images_to_tensor
from ..data.layouts import write_feedback_folder
from ..data.toy import subtype_of
from ..errors import CheckpointError, DataError
from ..evaluate.checklist import Checklist, ChecklistVerdict
from ..evaluate.data import (
    HALF_EXPERT,
    ImageSet,
    RealData,
    as_image_set,
    derived_seed,
    half_of,
    is_validation,
    stratified_cap,
)
from ..evaluate.features import as_uint8_images, classifier_proba
from ..evaluate.oracle import cache_dir, load_model_dir, save_model_dir, train_judge
from ..utils.config import option
from ..utils.fileio import atomic_writer

log = logging.getLogger(__name__)

EXPERT_ARCH = "resnet"
MODEL_FILE = "expert.safetensors"
META_FILE = "expert.json"
REFERENCE_FILE = "expert_reference.npz"  # half-A features and k-NN radii (manifold check)
CRITERIA_MODES = ("classifier", "checklist", "both")
JUDGEMENTS_FILE = "judgements.csv"
_FORMAT = 2

#: (file name, declared class) -> the label the expert's classifier is trained on.
LabelFn = Callable[[str, str], str]


def class_label(file_id: str, declared: str) -> str:
    return declared


def subtype_label(file_id: str, declared: str) -> str:
    """``CLASS_SUBTYPE_rest.png`` -> ``CLASS:SUBTYPE`` (PBC and toy-cell naming)."""
    return f"{declared}:{subtype_of(file_id)}"


LABEL_FUNCTIONS: dict[str, LabelFn] = {"class": class_label, "subtype": subtype_label}


def parent_of(label: str) -> str:
    """The declared class a training label belongs to (``neutrophil:BNE`` -> ``neutrophil``)."""
    return label.split(":", 1)[0]


@dataclass
class ExpertConfig:
    """How the simulated expert is trained and judges; every field is part of its cache key."""

    image_size: int = option(32, "side the expert looks at (the command line's 0: the samples' own size)")
    width: int = option(16, "the expert classifier's base channel width")
    epochs: int = option(10, "the expert classifier's training epochs")
    batch_size: int = option(64, "training batch size")
    lr: float = option(2e-3, "training learning rate")
    seed: int = option(0, "seeds the expert's training and the verdict flips")
    val_fraction: float = option(0.1, "share of its real images held out for early stopping", flag=False)
    max_train: int = option(0, "cap on training images (stratified; 0 = all of its half)")
    label_from: str = option(
        "class", "train on classes, or on subtypes (second '_' token of the file name)", choices=tuple(LABEL_FUNCTIONS)
    )
    # A pathologist rejects a cell whose shape says "lymphocyte" but whose stain is green: besides
    # recognising the class, a plausible image must lie inside the expert's own real-data manifold
    # (k-NN radius in its feature space, over half A). 0 turns the manifold check off.
    manifold_k: int = option(5, "neighbours of the expert's own real-data manifold check (0 = off)")
    # What the verdict rests on: the classifier (declared class recognised and on the expert's
    # manifold), the clinical checklist (cell size, nucleus/cell ratio, lobes, chromatin, cytoplasm
    # hue, granules, each within what the expert's real cells of the class show), or both.
    criteria: str = option(
        "classifier", "what a verdict rests on: the classifier, the clinical checklist, or both", choices=CRITERIA_MODES
    )
    checklist_quantile: float = option(0.01, "each checklist range spans real cells' [q, 1 - q] percentiles")

    def __post_init__(self) -> None:
        if self.criteria not in CRITERIA_MODES:
            raise DataError(f"--criteria must be one of {', '.join(CRITERIA_MODES)}, got {self.criteria!r}")
        if self.label_from not in LABEL_FUNCTIONS:
            raise DataError(f"--label_from must be one of {', '.join(LABEL_FUNCTIONS)}, got {self.label_from!r}")
        if self.image_size < 8 or self.epochs < 1 or self.width < 1 or self.batch_size < 2:
            raise DataError("--image_size must be >= 8, --epochs and --width positive, --batch_size >= 2")


@dataclass
class ExpertSimulator:
    """Γ_sim: a classifier over training labels, and the rule that turns it into verdicts."""

    model: nn.Module
    labels: list[str]
    channels: int
    config: ExpertConfig
    info: dict[str, Any] = field(default_factory=dict)
    # Every class of the real data, including any its half A happened to hold no image of.
    classes: list[str] = field(default_factory=list)
    directory: Path | None = field(default=None, repr=False)
    reference: np.ndarray | None = field(default=None, repr=False)  # half-A features
    radii: np.ndarray | None = field(default=None, repr=False)  # their k-NN radii
    checklist: Checklist | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # -- judging --------------------------------------------------------------------------------

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """P(label | image) over ``self.labels`` for uint8 NHWC or float NCHW [-1, 1] images."""
        return classifier_proba(self.model, as_uint8_images(images, self.image_size, self.channels))

    def p_declared(self, images: np.ndarray | torch.Tensor, class_names: Sequence[str]) -> np.ndarray:
        """P(declared class | image): the sum over the labels that are, or belong to, that class."""
        proba = self.probabilities(images)
        if len(class_names) != len(proba):
            raise ValueError(f"{len(proba)} images but {len(class_names)} class names")
        members: dict[str, np.ndarray] = {}
        for name in set(class_names):
            mask = np.array([lab == name or parent_of(lab) == name for lab in self.labels])
            if not mask.any():
                if name not in self.classes:
                    raise DataError(
                        f"declared class {name!r} is unknown to the simulated expert (it knows "
                        f"{', '.join(self.classes or sorted({parent_of(lab) for lab in self.labels}))});"
                        " rename the files or train the expert on real images of that class"
                    )
                # A real class with no image in half A: the expert cannot recognise it (p = 0).
                log.warning(
                    "the simulated expert saw no real %r image (none in its half); every %r sample is "
                    "judged implausible",
                    name,
                    name,
                )
            members[name] = mask
        return np.array([proba[i, members[c]].sum() for i, c in enumerate(class_names)])

    def judge(
        self,
        images: np.ndarray | torch.Tensor,
        class_names: Sequence[str],
        tau: float = 0.5,
        noise: float = 0.0,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(plausible bool array, p_declared)``: P(declared) >= tau, then each verdict flipped w.p. ``noise``."""
        if not 0.0 <= tau <= 1.0 or not 0.0 <= noise <= 1.0:
            raise DataError(f"--tau and --noise must be in [0, 1], got {tau} and {noise}")
        p = self.p_declared(images, class_names)
        plausible = np.ones(len(p), dtype=bool)
        if self.config.criteria in ("classifier", "both"):
            plausible &= (p >= tau) & self.in_manifold(images)
        if self.config.criteria in ("checklist", "both"):
            plausible &= self.check(images, class_names).plausible
        if noise > 0:
            flip = np.random.default_rng(derived_seed("expert-noise", seed)).random(len(p)) < noise
            plausible = plausible ^ flip
        return plausible, p

    def check(self, images: np.ndarray | torch.Tensor, class_names: Sequence[str]) -> ChecklistVerdict:
        """The clinical checklist, criterion by criterion (see :mod:`clinalign.evaluate.checklist`)."""
        if self.checklist is None:
            raise DataError("this simulated expert has no checklist; train it with --criteria checklist or both")
        return self.checklist.judge(as_uint8_images(images, self.image_size, self.channels), list(class_names))

    def features(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        from ..models.fit import extract_features

        x = images_to_tensor(as_uint8_images(images, self.image_size, self.channels))
        return extract_features(self.model, x).numpy()

    def in_manifold(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """True where an image's features fall within some real reference vector's k-NN radius."""
        n = len(images)
        if self.reference is None or self.radii is None or not len(self.reference):
            return np.ones(n, dtype=bool)
        feats = torch.from_numpy(self.features(images)).float()
        ref = torch.from_numpy(self.reference).float()
        radii = torch.from_numpy(self.radii).float()
        inside = np.zeros(n, dtype=bool)
        for lo in range(0, n, 1024):
            d = torch.cdist(feats[lo : lo + 1024], ref)
            inside[lo : lo + 1024] = (d <= radii[None, :]).any(dim=1).numpy()
        return inside

    def assign_concepts(
        self,
        images: np.ndarray | torch.Tensor,
        class_names: Sequence[str],
        plausible: np.ndarray,
        concepts: dict[str, str],
        min_p: float = 0.5,
    ) -> list[str | None]:
        """The concept each plausible image of a parent class belongs to, or None.

        ``concepts``: concept name -> the expert's label it stands for (``neutrophil-band`` ->
        ``neutrophil:BNE``). An image declared as the label's class gets the concept whose label
        has the highest probability among that class's labels, if that share is at least ``min_p``;
        an implausible image is never assigned (a pathologist names the subtype of a real-looking cell).
        """
        if not concepts:
            return [None] * len(class_names)
        unknown = sorted(label for label in concepts.values() if label not in self.labels)
        if unknown:
            raise DataError(
                f"--concept ...={unknown[0]}: the simulated expert has no label {unknown[0]!r} (its "
                f"labels: {', '.join(self.labels)}); train it with --label_from subtype on real "
                "images named CLASS_SUBTYPE_*"
            )
        by_label = {label: name for name, label in concepts.items()}
        proba = self.probabilities(images)
        out: list[str | None] = []
        for i, declared in enumerate(class_names):
            members = [k for k, lab in enumerate(self.labels) if parent_of(lab) == declared]
            if not plausible[i] or not any(self.labels[k] in by_label for k in members):
                out.append(None)
                continue
            share = proba[i, members] / max(float(proba[i, members].sum()), 1e-12)
            best = members[int(np.argmax(share))]
            label = self.labels[best]
            out.append(by_label.get(label) if share.max() >= min_p else None)
        return out

    # -- training -------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, real: RealData, config: ExpertConfig | None = None, label_fn: LabelFn | None = None, progress: bool = False
    ) -> ExpertSimulator:
        """Train on real half A (every image of it but a validation slice); see the module docstring.

        ``real``: an ImageSet, an ImageFolderDataset or ``(uint8 NHWC, class names[, ids])``.
        """
        config = config or ExpertConfig()
        label_fn = label_fn or LABEL_FUNCTIONS[config.label_from]
        real = as_image_set(real)
        real = real.at(config.image_size, real.channels)
        in_a = np.array([half_of(i) == HALF_EXPERT for i in real.ids])
        val_mask = np.array([is_validation(i, config.val_fraction) for i in real.ids])
        fit_set, val_set = real.subset(in_a & ~val_mask), real.subset(in_a & val_mask)
        fit_labels = [label_fn(i, c) for i, c in zip(fit_set.ids, fit_set.classes)]
        keep = stratified_cap(fit_labels, config.max_train, config.seed)
        fit_set, fit_labels = fit_set.subset(keep), [fit_labels[i] for i in keep]
        if len(fit_set) < 2:
            raise DataError(
                f"{real.name or 'real data'}: only {len(fit_set)} image(s) in the expert's half; add real images"
            )
        assert all(half_of(i) == HALF_EXPERT for i in fit_set.ids + val_set.ids)  # never the oracle's half
        labels = sorted(set(fit_labels))
        missing = sorted(set(real.classes) - {parent_of(lab) for lab in labels})
        if missing:
            log.warning(
                "no real image of %s in the expert's half (A) of %s; the expert will judge those classes "
                "implausible: add real images",
                ", ".join(missing),
                real.name or "the real data",
            )
        val_labels = [label_fn(i, c) for i, c in zip(val_set.ids, val_set.classes)]
        val_keep = [k for k, lab in enumerate(val_labels) if lab in labels]
        val_set, val_labels = val_set.subset(val_keep), [val_labels[k] for k in val_keep]
        log.info(
            "training the simulated expert (%s, %d px, %d labels) on %d real images of half A",
            EXPERT_ARCH,
            config.image_size,
            len(labels),
            len(fit_set),
        )
        model, info = train_judge(
            "expert", EXPERT_ARCH, labels, fit_set, fit_labels, val_set, val_labels, config, HALF_EXPERT, progress
        )
        info.update(real=real.name, real_fingerprint=real.fingerprint())
        log.info(
            "simulated expert: validation accuracy %.3f, trained in %.1fs", info["val_accuracy"], info["fit_seconds"]
        )
        expert = cls(model, labels, real.channels, config, info, classes=sorted(set(real.classes)))
        if config.manifold_k and len(fit_set) > config.manifold_k:
            from ..evaluate.prdc import knn_radii

            expert.reference = expert.features(fit_set.images)
            expert.radii = knn_radii(expert.reference, config.manifold_k)
        if config.criteria != "classifier":
            expert.checklist = Checklist.calibrate(fit_set.images, fit_set.classes, config.checklist_quantile)
            expert.info["checklist_real_pass"] = expert.checklist.real_pass["all"]
        return expert

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """``expert.safetensors`` + ``expert.json``, written to a temp folder and renamed into place."""
        meta = {
            "format": _FORMAT,
            "config": asdict(self.config),
            "labels": self.labels,
            "classes": self.classes,
            "channels": self.channels,
            "info": self.info,
            "checklist": self.checklist.to_dict() if self.checklist is not None else None,
        }
        self.directory = save_model_dir(
            directory,
            self.model,
            {
                "arch": EXPERT_ARCH,
                "channels": self.channels,
                "num_outputs": len(self.labels),
                "width": self.config.width,
                "labels": self.labels,
            },
            meta,
            MODEL_FILE,
            META_FILE,
        )
        if self.reference is not None:
            with atomic_writer(self.directory / REFERENCE_FILE, "wb") as f:
                np.savez(f, features=self.reference, radii=self.radii)
        return self.directory

    @classmethod
    def load(cls, directory: str | Path) -> ExpertSimulator:
        model, meta = load_model_dir(directory, MODEL_FILE, META_FILE, "'clinalign expert simulate'")
        try:
            config = ExpertConfig(**meta["config"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{directory}: {META_FILE} is from another clinalign version ({exc}); delete the folder to retrain"
            ) from None
        expert = cls(
            model,
            list(meta["labels"]),
            int(meta["channels"]),
            config,
            meta["info"],
            classes=list(meta.get("classes", [])),
            directory=Path(directory),
        )
        if meta.get("checklist"):
            expert.checklist = Checklist.from_dict(meta["checklist"])
        if (Path(directory) / REFERENCE_FILE).exists():
            with np.load(Path(directory) / REFERENCE_FILE) as ref:
                expert.reference, expert.radii = ref["features"], ref["radii"]
        return expert

    @classmethod
    def fit_or_load(
        cls, real: RealData, config: ExpertConfig, expert_dir: str | Path, progress: bool = False
    ) -> ExpertSimulator:
        """Reuse ``expert_dir/<key>`` when the same real data and config trained it, else fit and save."""
        real = as_image_set(real)
        real = real.at(config.image_size, real.channels)
        directory = cache_dir(expert_dir, {"format": _FORMAT, "real": real.fingerprint(), "config": asdict(config)})
        if (directory / META_FILE).exists():
            log.info("reusing the simulated expert in %s", directory)
            return cls.load(directory)
        expert = cls.fit(real, config, progress=progress)
        expert.save(directory)
        log.info("saved the simulated expert to %s", directory)
        return expert


@dataclass
class SimulationResult:
    out: Path
    expert_dir: Path
    n: int
    plausible_rate: float
    counts: dict[str, dict[str, int]]
    expert_accuracy: float | None = None  # on its own held-out real images


# Below this held-out accuracy the simulated expert's verdicts are mostly about its own errors.
EXPERT_MIN_ACCURACY = 0.9


def write_judgements(
    path: Path,
    ids: Sequence[str],
    classes: Sequence[str],
    plausible: np.ndarray,
    p_declared: np.ndarray,
    concepts: Sequence[str | None] | None = None,
) -> Path:
    """``judgements.csv``: ID, class, plausible (1/0), p_declared; with ``concepts``, also the concept
    each image was assigned to (empty when none)."""
    with atomic_writer(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["ID", "class", "plausible", "p_declared"] + (["concept"] if concepts is not None else []))
        for k, row in enumerate(zip(ids, classes, plausible, p_declared)):
            extra = [concepts[k] or ""] if concepts is not None else []
            w.writerow([row[0], row[1], int(row[2]), f"{row[3]:.6f}", *extra])
    return path


def expert_for(
    real: str | Path,
    config: ExpertConfig,
    expert_dir: str | Path,
    skip_bad_images: bool = False,
    progress: bool = False,
) -> ExpertSimulator:
    """The expert trained on the real folder ``real`` with ``config``: from the cache, or trained now."""
    real_set = ImageSet.from_folder(real, config.image_size, skip_bad_images=skip_bad_images)
    return ExpertSimulator.fit_or_load(real_set, config, expert_dir, progress)


def simulate(
    samples: str | Path,
    out: str | Path,
    real: str | Path,
    tau: float = 0.5,
    noise: float = 0.0,
    seed: int = 0,
    expert_dir: str | Path | None = None,
    config: ExpertConfig | None = None,
    overwrite: bool = False,
    skip_bad_images: bool = False,
    progress: bool = False,
    concepts: dict[str, str] | None = None,
    concept_min_p: float = 0.5,
) -> SimulationResult:
    """Judge a sample folder with the (cached) simulated expert and write the feedback folder.

    ``concepts`` (concept -> expert label, e.g. ``{"neutrophil-band": "neutrophil:BNE"}``): plausible
    samples of the label's class that the expert puts in that subtype go to ``CONCEPT/align/``
    instead of ``CLASS/align/``, and ``concepts.json`` records each concept's parent class.
    """
    config = config or ExpertConfig(seed=seed)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:  # before minutes of training, not after
        raise DataError(f"{out}: already exists and is not empty; pass a new --out or --overwrite True")
    expert_dir = Path(expert_dir) if expert_dir else out.parent / "expert"
    expert = expert_for(real, config, expert_dir, skip_bad_images, progress)
    sample_set = ImageSet.from_folder(samples, config.image_size, expert.channels, skip_bad_images=skip_bad_images)
    plausible, p = expert.judge(sample_set.images, sample_set.classes, tau, noise, seed)
    assigned = expert.assign_concepts(sample_set.images, sample_set.classes, plausible, concepts or {}, concept_min_p)
    folders = [a or c for a, c in zip(assigned, sample_set.classes)]
    parents = {name: parent_of(label) for name, label in (concepts or {}).items()}
    counts = write_feedback_folder(
        out, zip(sample_set.paths, folders, plausible.tolist()), overwrite=overwrite, concepts=parents
    )
    write_judgements(
        out / JUDGEMENTS_FILE, sample_set.ids, sample_set.classes, plausible, p, assigned if concepts else None
    )
    accuracy = expert.info.get("val_accuracy")
    _log_verdicts(len(sample_set), float(plausible.mean()), tau, noise, accuracy, counts, out)
    return SimulationResult(
        out, expert.directory or expert_dir, len(sample_set), float(plausible.mean()), counts, accuracy
    )


def _log_verdicts(
    n: int, share: float, tau: float, noise: float, accuracy: float | None, counts: dict, out: Path
) -> None:
    """The verdicts' summary, and the two ways they can be useless for a reward model."""
    log.info(
        "judged %d samples: %.1f %% plausible (tau %.2f, noise %.2f; expert accuracy on held-out real images "
        "%.3f) -> %s",
        n,
        100 * share,
        tau,
        noise,
        accuracy or float("nan"),
        out,
    )
    if accuracy is not None and accuracy < EXPERT_MIN_ACCURACY:
        log.warning(
            "the simulated expert reaches only %.3f accuracy on its held-out real images (below %s): its "
            "verdicts are noisy; give it more real images (pool E) or more --epochs",
            accuracy,
            EXPERT_MIN_ACCURACY,
        )
    one_sided = sorted(c for c, v in counts.items() if not v.get("align") or not v.get("notalign"))
    if one_sided:
        log.warning(
            "one-sided verdicts for %s (all plausible or all implausible): the reward model cannot learn a "
            "boundary there",
            ", ".join(one_sided),
        )
