"""`make demo` as a newcomer runs it: every driver converts the sample image on a local registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from accel.drivers import available_drivers

pytestmark = pytest.mark.integration

DEMO = Path(__file__).parents[2] / "misc" / "demo.py"


def test_demo_converts_with_every_driver(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--work", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    converted = [line for line in proc.stdout.splitlines() if line.startswith("-> ")]
    assert len(converted) == len(available_drivers())
