"""Builds the Go reference helper (tests/interop/estargz/go) once per session, or skips with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GO_SOURCE = Path(__file__).resolve().parent / "go"
GOPATH = Path("/usr/share/gocode")
LIBRARY = GOPATH / "src/github.com/containerd/stargz-snapshotter/estargz"
INSTALL_HINT = "apt-get install -y golang-go golang-github-containerd-stargz-snapshotter-dev"


def build_esgzref(out_dir: Path) -> Path | str:
    """Build the helper; returns its path, or why it cannot be built."""
    go = shutil.which("go")
    if go is None:
        return f"`go` not found ({INSTALL_HINT})"
    if not LIBRARY.is_dir():
        return f"the estargz Go library is not installed under {LIBRARY} ({INSTALL_HINT})"
    binary = out_dir / "esgzref"
    # The user's Go build cache is kept, so later sessions rebuild in about two seconds.
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
def esgzref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_esgzref(tmp_path_factory.mktemp("esgzref"))
    if isinstance(built, str):
        print(f"skipping eStargz interop tests: {built}")
        pytest.skip(built)
    return built
