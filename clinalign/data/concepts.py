"""Concept classes on disk: a class map whose new classes have parents, and ``concepts.json``.

Clinical concepts are finer classes an expert names while reviewing (Sun et al. 2023, Algorithm 4).

A concept is a new class with a parent (``neutrophil-band`` under ``neutrophil``). It has no real
images: the expert teaches it by assigning synthetic images of the parent to it, which in the
feedback layout means putting them under ``CONCEPT/align/`` (``CONCEPT/notalign/`` for an
assignment judged implausible) instead of ``PARENT/align/``. The folder's ``concepts.json``
(``{"neutrophil-band": "neutrophil"}``) records each concept's parent, because a folder name alone
cannot say whether ``neutrophil-band`` is a concept or a class whose real images are missing.

The path through the stages:

1. feedback folder with concept folders + ``concepts.json`` (review export, simulated expert);
2. :func:`clinalign.concepts.assign.assign`: a copy of the sample folder whose ``manifest.csv``
   declares each assigned image as its concept (file names, the IDs, are kept), plus ``concepts.json``;
3. reward model trained on the feedback folder learns Γ(x, concept) like any class; scoring the
   assigned folder gives r(x, concept) for the assigned images;
4. finetuning grows the class map and the class embedding (new rows copied from the parent's row)
   and trains the concept rows on the assigned images, weighted by reward, beside the real data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import DataError
from ..utils.fileio import atomic_writer
from .classmap import ClassMap, validate_class_name
from .naming import is_image_file

log = logging.getLogger(__name__)

CONCEPTS_FILE = "concepts.json"
_LAYOUT_DIRS = ("align", "notalign")


def parse_concept_spec(spec: str, what: str = "--concept") -> tuple[str, str]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)``; NAME must be a valid class name."""
    name, sep, value = spec.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise DataError(f"{what} {spec!r}: expected NAME=PARENT, e.g. neutrophil-band=neutrophil")
    validate_class_name(name)
    return name, value


def parse_concept_specs(specs: Iterable[str] | None, what: str = "--concept") -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs or []:
        name, value = parse_concept_spec(spec, what)
        if name in out and out[name] != value:
            raise DataError(f"{what}: {name!r} is given twice ({out[name]!r} and {value!r}); give it once")
        out[name] = value
    return out


def read_concepts_file(folder: str | Path) -> dict[str, str]:
    """``{concept: parent}`` from ``folder/concepts.json``; empty when the file is absent."""
    path = Path(folder) / CONCEPTS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f'{path}: cannot read ({exc}); write it as {{"CONCEPT": "PARENT", ...}}') from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise DataError(f'{path}: expected an object {{"CONCEPT": "PARENT", ...}}; fix or delete the file')
    for name in data:
        try:
            validate_class_name(name)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
    return dict(data)


def write_concepts_file(folder: str | Path, parents: Mapping[str, str]) -> Path:
    path = Path(folder) / CONCEPTS_FILE
    with atomic_writer(path, "w") as f:
        f.write(json.dumps(dict(sorted(parents.items())), indent=2) + "\n")
    return path


def concept_parents(
    folder: str | Path,
    known: Iterable[str],
    given: Mapping[str, str] | None = None,
    classes: Iterable[str] | None = None,
) -> dict[str, str]:
    """The parent of every class of ``folder`` that ``known`` lacks: from ``given``, else concepts.json.

    ``classes``: the classes ``folder`` holds (default: its sub-folder names, the feedback layout).
    A class with no parent, or whose parent is not known, is a DataError naming the folder and the
    fix, since the embedding row of a concept is initialised from its parent's row.
    """
    folder = Path(folder)
    known = set(known)
    recorded = {**read_concepts_file(folder), **(given or {})}
    if classes is None:
        classes = (
            [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []
        )
    parents: dict[str, str] = {}
    for cls in sorted(set(classes) - known):
        parent = recorded.get(cls)
        if parent is None:
            raise DataError(
                f"{folder / cls}: class {cls!r} is not one of the model's classes ({', '.join(sorted(known))}) and "
                f"no parent is recorded for it; if it is a concept, add it to {folder / CONCEPTS_FILE} "
                f'({{"{cls}": "PARENT"}}) or pass --concept {cls}=PARENT, else rename the folder to a known class'
            )
        parents[cls] = parent
    # A concept's parent may itself be a concept of the same folder; it must end in a known class.
    for cls, parent in parents.items():
        seen = {cls}
        while parent not in known:
            if parent not in parents or parent in seen:
                raise DataError(
                    f"{folder / cls}: parent {parent!r} of concept {cls!r} is not a known class "
                    f"({', '.join(sorted(known))}); fix {folder / CONCEPTS_FILE} or --concept"
                )
            seen.add(parent)
            parent = parents[parent]
    return parents


def grow_class_map(class_map: ClassMap, parents: Mapping[str, str]) -> ClassMap:
    """``class_map`` with every concept of ``parents`` appended (sorted, parents before children).

    A concept the map already holds is kept where it is, provided its parent agrees, so growing a
    finetuned run's map by the same concepts again is a no-op.
    """
    grown = class_map
    pending = dict(sorted(parents.items()))
    while pending:
        progressed = False
        for name, parent in list(pending.items()):
            if name in grown:
                if grown.parents.get(name) != parent:
                    raise DataError(
                        f"concept {name!r} is already in the class map with parent "
                        f"{grown.parents.get(name)!r}, not {parent!r}; use another name"
                    )
            elif parent in grown:
                grown = grown.grow(name, parent)
            else:
                continue
            del pending[name]
            progressed = True
        if not progressed:
            name, parent = next(iter(pending.items()))
            raise DataError(
                f"parent {parent!r} of concept {name!r} is not in the class map "
                f"({', '.join(grown.names)}); add the parent first"
            )
    return grown


def extension_parents(old: ClassMap, new: ClassMap) -> list[int]:
    """Row of ``old`` each class ``new`` appends copies from (the nearest ancestor ``old`` holds).

    Raises DataError unless ``new`` extends ``old``: a class-conditional model's rows are indexed
    by position, so the old classes must keep their indices.
    """
    if new.names[: len(old)] != old.names:
        raise DataError(
            f"class map {new.names} does not extend the checkpoint's {old.names} (the first "
            f"{len(old)} classes must be the same, in the same order); grow the checkpoint's own map"
        )
    rows = []
    for name in new.names[len(old) :]:
        ancestor, seen = new.parents.get(name), {name}
        while ancestor is not None and ancestor not in old and ancestor not in seen:
            seen.add(ancestor)
            ancestor = new.parents.get(ancestor)
        if ancestor is None or ancestor not in old:
            raise DataError(
                f"new class {name!r} has no parent among the checkpoint's classes "
                f"({', '.join(old.names)}); its embedding row needs one to start from"
            )
        rows.append(old.index(ancestor))
    return rows


def concept_assignments(feedback: str | Path, concepts: Iterable[str]) -> dict[str, tuple[str, bool]]:
    """``{image ID: (concept, plausible)}`` for the images under ``feedback/CONCEPT/align|notalign``."""
    feedback = Path(feedback)
    out: dict[str, tuple[str, bool]] = {}
    for concept in sorted(concepts):
        for sub, plausible in (("align", True), ("notalign", False)):
            d = feedback / concept / sub
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                if not (p.is_file() and is_image_file(p)):
                    continue
                if p.name in out and out[p.name][0] != concept:
                    raise DataError(
                        f"{p}: assigned to both {out[p.name][0]!r} and {concept!r}; "
                        "keep the image in one concept folder"
                    )
                out[p.name] = (concept, plausible)
    return out
