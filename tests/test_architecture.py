"""The package's layers: every import runs down, never up, and no stage reaches into a sibling.

A newcomer finds a stage from ``clinalign --help`` in two hops (the command -> its package); this
test keeps the arrows between packages the way docs/ARCHITECTURE.md draws them.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "clinalign"

# Lowest first. A module may import its own package and anything in a lower layer.
LAYERS = [
    {"errors", "__init__"},
    {"utils"},
    {"data", "diffusion", "models"},
    {"training", "review"},
    {"reward"},
    {"sampling", "evaluate", "interop"},
    {"expert"},
    {"concepts"},
    {"pipeline"},
    {"cli"},
    {"__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, root: Path) -> set[str]:
    """Absolute clinalign modules imported by ``path`` (relative imports resolved against ``root``)."""
    rel = path.relative_to(root).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
            out.update(n for n in names if n.startswith("clinalign"))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("clinalign"))
    return out


def upward_imports(package: Path = PACKAGE) -> list[str]:
    bad = []
    root = package.parent
    for path in sorted(package.rglob("*.py")):
        me = top_level(".".join(path.relative_to(root).with_suffix("").parts))
        for target in imports_of(path, root):
            other = top_level(target)
            if other == me or other not in LAYER:
                continue
            if LAYER[other] >= LAYER[me]:
                bad.append(f"{path.relative_to(root)} imports {target} ({other} is not below {me})")
    return bad


def test_every_package_is_placed_in_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert packages | modules <= set(LAYER), sorted((packages | modules) - set(LAYER))


def test_no_import_runs_up_or_sideways():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: a training module importing the pipeline, or a stage a sibling, is caught."""
    copy = tmp_path / "clinalign"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    (copy / "training" / "probe_up.py").write_text("from ..pipeline import rounds\n")
    (copy / "sampling" / "probe_side.py").write_text("from clinalign.evaluate import run\n")
    found = upward_imports(copy)
    assert any("probe_up" in line for line in found) and any("probe_side" in line for line in found), found
