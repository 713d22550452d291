"""Teach a concept: declare the samples an expert assigned to a concept as that concept.

See :mod:`clinalign.data.concepts` for what a concept is and how it travels through the stages.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..data.concepts import concept_assignments, concept_parents, write_concepts_file
from ..data.naming import MANIFEST_NAME, declared_classes, list_images
from ..errors import DataError
from ..utils.fileio import atomic_directory

log = logging.getLogger(__name__)


def _samples_by_id(samples: Path) -> dict[str, tuple[Path, str]]:
    """``{file name: (path, declared class)}``; file names are the IDs, so they must be unique."""
    paths = list_images(samples)
    by_id: dict[str, tuple[Path, str]] = {}
    for p, c in zip(paths, declared_classes(paths, samples)):
        if p.name in by_id:
            raise DataError(f"{p}: file name also used by {by_id[p.name][0]}; sample IDs must be unique")
        by_id[p.name] = (p, c)
    return by_id


def _relabel(
    by_id: dict[str, tuple[Path, str]],
    assigned: dict[str, tuple[str, bool]],
    parents: dict[str, str],
    feedback: Path,
    only_assigned: bool,
) -> tuple[list[tuple[str, str, Path]], dict[str, int]]:
    """(rows of (ID, new class, path), images per concept): an assigned image becomes its concept."""

    def ancestors(name: str) -> set[str]:
        found = set()
        while name in parents:
            name = parents[name]
            found.add(name)
        return found

    rows, counts = [], {}
    for file_id, (path, cls) in sorted(by_id.items()):
        label = cls
        if file_id in assigned:
            concept = assigned[file_id][0]
            if cls not in ancestors(concept):
                raise DataError(
                    f"{feedback / concept}: {file_id} was sampled as {cls!r}, not as {concept!r}'s "
                    f"parent {parents[concept]!r}; move it back to {cls}/"
                )
            label = concept
            counts[concept] = counts.get(concept, 0) + 1
        elif only_assigned:
            continue
        rows.append((file_id, label, path))
    return rows, counts


@dataclass
class AssignResult:
    out: Path
    parents: dict[str, str]
    assigned: dict[str, int] = field(default_factory=dict)  # concept -> images relabelled
    n: int = 0


def assign(
    samples: str | Path,
    feedback: str | Path,
    out: str | Path,
    known: Iterable[str],
    given: Mapping[str, str] | None = None,
    overwrite: bool = False,
    only_assigned: bool = False,
) -> AssignResult:
    """Copy ``samples`` to ``out`` declaring each image the expert assigned to a concept as that concept.

    ``known``: the classes of the model the samples came from. File names are kept (they are the
    IDs of rewards CSVs and votes); ``out/manifest.csv`` (``ID,class``) gives every image's class and
    ``out/concepts.json`` the concepts' parents. An assigned image must have been sampled as the
    concept's parent (or one of its ancestors): a concept refines its parent, it does not replace it.
    ``only_assigned``: copy only the images assigned to a concept, so that a finetune on the folder
    spends its whole synthetic batch on the concepts (the real-data term still covers every class).
    """
    samples, feedback, out = Path(samples), Path(feedback), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: already exists and is not empty; pass a new --out or --overwrite True")
    known = set(known)
    parents = concept_parents(feedback, known, given)
    if not parents:
        raise DataError(
            f"{feedback}: assigns no image to a concept (every class folder is one of the model's "
            f"classes); name concepts in the review app or with expert simulate --concept"
        )
    assigned = concept_assignments(feedback, parents)
    by_id = _samples_by_id(samples)
    missing = sorted(set(assigned) - set(by_id))
    if missing:
        raise DataError(
            f"{feedback}: {len(missing)} assigned image(s) are not in {samples}, e.g. {missing[0]}; "
            "pass the sample folder the feedback was collected on"
        )

    rows, counts = _relabel(by_id, assigned, parents, feedback, only_assigned)

    with atomic_directory(out) as tmp:
        for file_id, _, path in rows:
            shutil.copyfile(path, tmp / file_id)
        # No rewards.csv is copied: its scores are for the old declared classes; rescore this folder.
        with open(tmp / MANIFEST_NAME, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ID", "class"])
            w.writerows((file_id, label) for file_id, label, _ in rows)
        write_concepts_file(tmp, parents)
    log.info(
        "declared %s in %s (%d images)", ", ".join(f"{n} as {c}" for c, n in sorted(counts.items())), out, len(rows)
    )
    return AssignResult(out, parents, counts, len(rows))
