"""Small Go programs of ours, built at test time against Debian's packaged Go libraries (GOPATH mode),
for checking our output with the reference implementations."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

GOPATH = Path("/usr/share/gocode")


def build_go_helper(source: Path, out: Path, library: str, packages: str) -> Path | str:
    """Build the program in ``source`` into ``out``; returns its path, or why it cannot be built.

    ``library`` is the import path of the reference library it needs (under GOPATH), ``packages`` the
    Debian packages that provide it (for the message).
    """
    hint = f"apt-get install -y golang-go {packages}"
    go = shutil.which("go")
    if go is None:
        return f"`go` not found ({hint})"
    if not (GOPATH / "src" / library).is_dir():
        return f"{library} is not installed under {GOPATH} ({hint})"
    # The user's Go build cache is kept, so later sessions rebuild in about two seconds.
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOFLAGS="")
    proc = subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=source, env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        return f"building the Go helper in {source.name} failed: {proc.stderr.strip()[-2000:]}"
    return out
