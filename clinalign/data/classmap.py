"""The label -> index map of a run.

A class-conditional model learns one embedding row per index, so the map is fixed the first time
a run sees its data and saved with the run; every later stage (sample, review, reward, finetune,
evaluate) loads it instead of re-deriving it from whatever folder it is given. New classes
("concepts", e.g. ``neutrophil-band`` under ``neutrophil``) are appended with :meth:`ClassMap.grow`,
so the indices a checkpoint was trained with never move.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .transforms import atomic_writer

#: File name under which a run stores its class map.
CLASS_MAP_FILE = "class_map.json"

_FORMAT_VERSION = 1
# '_' separates the class prefix from the rest of a file name; path separators would make the
# prefix a folder. Both would silently change which class a file declares.
_FORBIDDEN = ("_", "/", "\\")


def validate_class_name(name: str) -> None:
    """Raise DataError unless ``name`` can be a file-name class prefix."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"class name {name!r} is empty; give every class a non-empty name")
    bad = [ch for ch in _FORBIDDEN if ch in name]
    if bad:
        suggestion = name
        for ch in _FORBIDDEN:
            suggestion = suggestion.replace(ch, "-")
        raise DataError(
            f"class name {name!r} contains {' and '.join(repr(c) for c in bad)}, which cannot appear "
            f"in a class (the class is the file-name prefix before the first '_'); "
            f"rename it, e.g. {suggestion!r}"
        )


@dataclass
class ClassMap:
    """Class names in index order, plus the parent of each concept (``None`` for base classes)."""

    names: list[str]
    parents: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = list(self.names)
        for name in self.names:
            validate_class_name(name)
        seen: set[str] = set()
        for name in self.names:
            if name in seen:
                raise DataError(f"class {name!r} appears twice in the class map; class names must be unique")
            seen.add(name)
        for child, parent in self.parents.items():
            if child not in seen:
                raise DataError(f"class map gives a parent for {child!r}, which is not one of its classes")
            if parent is not None and parent not in seen:
                raise DataError(f"class {child!r} has parent {parent!r}, which is not one of the classes")
        # Every class gets an explicit entry so to_dict() round-trips and lookups never KeyError.
        self.parents = {name: self.parents.get(name) for name in self.names}
        self._index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> ClassMap:
        """Sorted unique labels: the order the seed's loader uses, independent of file order."""
        return cls(sorted(set(labels)))

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise DataError(
                f"class {name!r} is not in this run's class map (known classes: "
                f"{', '.join(self.names)}); the model was trained without it: use one of the known "
                "classes, rename the files, or add it as a concept with ClassMap.grow and finetune"
            ) from None

    def indices(self, labels: Iterable[str]) -> list[int]:
        return [self.index(label) for label in labels]

    def name(self, index: int) -> str:
        if not 0 <= index < len(self.names):
            raise DataError(f"class index {index} is out of range: this class map has {len(self)} classes")
        return self.names[index]

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self):
        return iter(self.names)

    def children(self, name: str) -> list[str]:
        """Concepts directly under ``name``."""
        return [child for child in self.names if self.parents[child] == name]

    def grow(self, name: str, parent: str | None = None) -> ClassMap:
        """A new map with ``name`` appended at the end; existing indices are unchanged."""
        validate_class_name(name)
        if name in self:
            raise DataError(f"class {name!r} is already in the class map (index {self.index(name)})")
        if parent is not None and parent not in self:
            raise DataError(
                f"parent class {parent!r} of new concept {name!r} is not in the class map "
                f"(known classes: {', '.join(self.names)}); add the parent first"
            )
        return ClassMap(self.names + [name], {**self.parents, name: parent})

    def to_dict(self) -> dict[str, Any]:
        return {"version": _FORMAT_VERSION, "names": list(self.names), "parents": dict(self.parents)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassMap:
        names = data.get("names") if isinstance(data, dict) else None
        if not isinstance(names, list):
            raise DataError("class map has no 'names' list; it is not a clinalign class map")
        return cls(names, dict(data.get("parents") or {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_writer(path, "w") as f:
            f.write(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClassMap:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(
                f"{path}: class map not found; pass the run directory that holds {CLASS_MAP_FILE}"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read class map ({exc}); restore it from the run directory") from None
        try:
            return cls.from_dict(data)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
