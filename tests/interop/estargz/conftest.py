"""Builds the Go reference helper (tests/interop/estargz/go) once per session, or skips with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gohelper import build_go_helper

GO_SOURCE = Path(__file__).resolve().parent / "go"


def build_esgzref(out_dir: Path) -> Path | str:
    """Build the helper; returns its path, or why it cannot be built."""
    return build_go_helper(
        GO_SOURCE,
        out_dir / "esgzref",
        "github.com/containerd/stargz-snapshotter/estargz",
        "golang-github-containerd-stargz-snapshotter-dev",
    )


@pytest.fixture(scope="session")
def esgzref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_esgzref(tmp_path_factory.mktemp("esgzref"))
    if isinstance(built, str):
        print(f"skipping eStargz interop tests: {built}")
        pytest.skip(built)
    return built
