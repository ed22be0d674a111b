"""Builds the containers/storage reference helper (tests/interop/zstdchunked/go) once, or skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GO_SOURCE = Path(__file__).resolve().parent / "go"
GOPATH = Path("/usr/share/gocode")
LIBRARY = GOPATH / "src/github.com/containers/storage/pkg/chunked/compressor"
INSTALL_HINT = "apt-get install -y golang-go golang-github-containers-storage-dev"


def build_csref(out_dir: Path) -> Path | str:
    """Build the helper; returns its path, or why it cannot be built."""
    go = shutil.which("go")
    if go is None:
        return f"`go` not found ({INSTALL_HINT})"
    if not LIBRARY.is_dir():
        return f"containers/storage's chunked compressor is not installed under {LIBRARY} ({INSTALL_HINT})"
    binary = out_dir / "csref"
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOFLAGS="")
    proc = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        return f"building the Go helper failed: {proc.stderr.strip()[-2000:]}"
    return binary


@pytest.fixture(scope="session")
def csref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_csref(tmp_path_factory.mktemp("csref"))
    if isinstance(built, str):
        print(f"skipping containers/storage interop tests: {built}")
        pytest.skip(built)
    return built
