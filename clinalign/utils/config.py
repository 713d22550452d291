"""One config path: every stage's settings are a dataclass, and everything else derives from it.

A field declared with :func:`option` carries its default and its help text; :func:`add_flags`
turns a dataclass into ``--name`` options in improved-diffusion's style (``--learn_sigma True``),
:func:`resolve` builds the dataclass from what the user typed, a checkpoint's saved values and the
defaults (in that order of precedence), and ``dataclasses.asdict`` is what checkpoints and run
configs store. So a default lives in exactly one place: the dataclass field.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)

C = TypeVar("C")
_MISSING = dataclasses.MISSING


def option(
    default: Any,
    help: str = "",
    *,
    choices: tuple | None = None,
    metavar: str | None = None,
    flag: bool = True,
    name: str | None = None,
    aliases: tuple[str, ...] = (),
    kind: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with its command-line help; ``flag=False`` keeps it off the command line.

    ``name``: the flag's name when it is not the field's (a seed script's spelling, e.g.
    ``--save_checkpoints_dir`` for ``save_dir``); ``aliases``: more spellings; ``kind``: the type a
    typed value is converted with when the default does not tell (a ``None`` default, a ``Path``).
    """
    meta = {
        "help": help,
        "choices": choices,
        "metavar": metavar,
        "flag": flag,
        "name": name,
        "aliases": aliases,
        "kind": kind,
    }
    return dataclasses.field(default=default, metadata=meta)


def repeated(help: str = "", *, metavar: str | None = None) -> Any:
    """A list field filled by a repeatable flag (``--concept A=B --concept C=D``)."""
    return dataclasses.field(
        default_factory=list, metadata={"help": help, "metavar": metavar, "repeat": True, "flag": True}
    )


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is _MISSING else f.default


def flag_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", False)]


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls,
    *,
    inherit: bool = False,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """``--name`` options for the fields of dataclass ``cls``.

    ``inherit=True``: an option the user does not type stays ``None``, so that :func:`resolve` can
    take the value from a checkpoint first and the default last (resuming, finetuning and sampling
    never need the architecture flags repeated). ``defaults`` overrides a default for this parser
    only (e.g. a command whose natural batch size differs); the dataclass keeps its own.
    """
    for f in flag_fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        default = (defaults or {}).get(f.name, default_of(f))
        _add_flag(parser, f, default, inherit)


def _add_flag(parser, f: dataclasses.Field, default: Any, inherit: bool) -> None:
    meta = f.metadata
    key = meta.get("name") or f.name
    names = [f"--{key}", *meta.get("aliases", ())]
    common = {"dest": key, "metavar": meta.get("metavar")}
    if meta.get("repeat"):
        parser.add_argument(*names, action="append", default=[], help=f"{meta['help']} (repeatable)", **common)
        return
    shown = f"{default!r}{', or the checkpoint' if inherit else ''}"
    text = f"{meta['help']} (default: {shown})" if meta["help"] else f"(default: {shown})"
    value = None if inherit else default
    if isinstance(default, bool):
        # --flag alone means True, as the seed scripts allow; --flag False turns it off
        common["metavar"] = common["metavar"] or "BOOL"
        parser.add_argument(*names, type=str2bool, nargs="?", const=True, default=value, help=text, **common)
        return
    kind = meta.get("kind") or (type(default) if default is not None else str)
    parser.add_argument(*names, type=kind, default=value, choices=meta.get("choices"), help=text, **common)


def _values(args: argparse.Namespace | Mapping[str, Any]) -> Mapping[str, Any]:
    return vars(args) if isinstance(args, argparse.Namespace) else args


def typed(args: argparse.Namespace | Mapping[str, Any], cls) -> dict[str, Any]:
    """The fields of ``cls`` given in ``args`` (an option left ``None`` by ``inherit=True`` is not given).

    From parsed flags (a Namespace) only ``cls``'s own flags are read, under their flag names, so
    that two configs sharing a parser never take each other's values; from a dict (a caller's),
    a field is found under its flag name or its own.
    """
    values = _values(args)
    parsed = isinstance(args, argparse.Namespace)
    out = {}
    for f in dataclasses.fields(cls):
        if parsed and not f.metadata.get("flag", False):
            continue
        for key in (f.metadata.get("name"), None if parsed and f.metadata.get("name") else f.name):
            if key and values.get(key) is not None:
                out[f.name] = values[key]
                break
    return out


def from_dict(cls: type[C], values: Mapping[str, Any] | None, what: str = "") -> C:
    """``cls`` from a stored dict: unknown keys (from a newer version) are ignored, missing ones defaulted."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values or {}) - names)
    if unknown:
        log.debug("%s: ignoring unknown setting(s) %s", what or cls.__name__, ", ".join(unknown))
    return cls(**{k: v for k, v in (values or {}).items() if k in names})


def resolve(cls: type[C], args: argparse.Namespace | Mapping[str, Any], base: Any = None) -> C:
    """Typed value, else ``base`` (a checkpoint's saved config, dict or dataclass), else the default."""
    if dataclasses.is_dataclass(base):
        base = dataclasses.asdict(base)
    return from_dict(cls, {**(base or {}), **typed(args, cls)})


def mismatches(saved: Any, given: Mapping[str, Any], what: str = "checkpoint") -> list[str]:
    """``--name value (WHAT has other)`` for every given value that differs from the saved config.

    Keys the saved config lacks (written before the option existed) are not mismatches.
    """
    saved = dataclasses.asdict(saved) if dataclasses.is_dataclass(saved) else dict(saved)
    return [f"--{k} {v!r} ({what} has {saved[k]!r})" for k, v in sorted(given.items()) if k in saved and saved[k] != v]
