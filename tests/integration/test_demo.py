"""`make demo` as a newcomer runs it: every driver converts the sample image on a local registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from accel.drivers import available_drivers
from accel.oci.layout import OCILayout

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
    # A short table; the manifests go to a file.
    assert len(proc.stdout.splitlines()) < 25 and '"mediaType"' not in proc.stdout
    assert proc.stdout.splitlines()[2].split() == [
        "driver",
        "target",
        "layers",
        "bytes",
        "seconds",
        "verified",
    ]
    for line, driver in zip(converted, available_drivers(), strict=True):
        cells = line.split()
        assert cells[1] == driver and cells[3].isdigit() and cells[4].isdigit()
        assert "digest-checked, skopeo reads it" in line
    work = tmp_path / "demo"
    assert '"mediaType"' in (work / "details.txt").read_text()
    # The results outlive the demo's registry: as a layout, and a command restarting the registry.
    tags = OCILayout(work / "images").tags()
    assert sorted(tags) == sorted(line.split()[2].rsplit(":", 1)[1] for line in converted)
    assert f"serve {work / 'registry' / 'config.yml'}" in proc.stdout
