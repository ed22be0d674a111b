"""Builds the containers/storage reference helper (tests/interop/zstdchunked/go) once, or skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gohelper import build_go_helper

GO_SOURCE = Path(__file__).resolve().parent / "go"


@pytest.fixture(scope="session")
def csref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_go_helper(
        GO_SOURCE,
        tmp_path_factory.mktemp("csref") / "csref",
        "github.com/containers/storage/pkg/chunked/compressor",
        "golang-github-containers-storage-dev",
    )
    if isinstance(built, str):
        print(f"skipping containers/storage interop tests: {built}")
        pytest.skip(built)
    return built
