"""The two newcomer commands: what `make demo` and `make test` would run (dry run, nothing executed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(target: str) -> str:
    return subprocess.run(
        ["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True
    ).stdout


def test_demo_installs_only_what_the_demo_needs() -> None:
    installs = [line for line in dry_run("demo").splitlines() if "dpkg -s" in line]
    assert len(installs) == 1
    assert "docker-registry" in installs[0] and "skopeo" in installs[0]
    assert "golang" not in installs[0] and "containerd" not in installs[0]


def test_test_installs_everything_and_runs_every_test() -> None:
    lines = dry_run("test").splitlines()
    [install] = [line for line in lines if "dpkg -s" in line]
    assert "golang-go" in install and "erofs-utils" in install and "docker-registry" in install
    [pytest_line] = [line for line in lines if "bin/pytest" in line]
    assert "not slow" not in pytest_line, "no test is marked slow: the filter would only mislead"
