"""The shape of the house, checked on the source: imports point one way between the top-level packages,
and no module reaches into another package's private names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# A package may import only packages of a lower rank (and itself). Formats share a rank with the
# registry and the content store so that neither can import the others: a format is pure bytes.
RANKS = {
    "errors": 0,
    "accel": 0,  # the package root holds only the version
    "database": 1,  # the shared PostgreSQL: config checks DSNs with it; tasks and converter keep data in it
    "config": 2,
    "oci": 2,
    "metrics": 2,
    "content": 3,
    "registry": 3,
    "formats": 3,
    "drivers": 4,
    "converter": 5,
    "tasks": 6,
    "server": 7,
    "cli": 8,
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted((SRC / "accel").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "accel"


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def test_every_package_has_a_rank() -> None:
    tops = {_top(module) for module, _ in _modules()}
    assert tops <= set(RANKS), tops - set(RANKS)


def test_imports_point_down() -> None:
    upward = []
    for module, path in _modules():
        mine = _top(module)
        for target, _ in _imports(path):
            if target.split(".")[0] != "accel":
                continue
            theirs = _top(target)
            if theirs != mine and RANKS[theirs] >= RANKS[mine]:
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_no_module_imports_another_packages_private_names() -> None:
    leaks = []
    for module, path in _modules():
        here = _package(module, path)
        for target, names in _imports(path):
            if target.split(".")[0] != "accel":
                continue
            target_package = (
                target.rpartition(".")[0] if not (SRC / target.replace(".", "/")).is_dir() else target
            )
            if target_package == here or target_package.startswith(here + "."):
                continue
            hidden = [
                part for part in target.split(".") if part.startswith("_") and not part.startswith("__")
            ]
            hidden += [n for n in names if n.startswith("_") and not n.startswith("__")]
            if hidden:
                leaks.append(f"{module} imports {', '.join(hidden)} from {target}")
    assert not leaks, leaks
