"""`accelctl convert` as a user runs it: a real process, a real registry, its output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.configs import write_config
from tests.support.images import build_docker_image, build_multiplatform_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration


def accelctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accel.cli.accelctl", *args], capture_output=True, text=True, timeout=300
    )


def test_json_summary_and_plain_progress(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_docker_image(tmp_path / "src")
    source = f"{registry_plain.host}/cli/rich:v1"
    digest = push_layout(image.layout, source, format=None, tls_verify=False)
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}
    )

    proc = accelctl("convert", "--config", str(config), "--output", "json", source)

    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["source"] == source and summary["source_digest"] == digest
    assert summary["target"] == f"{source}-oci"
    assert summary["target_digest"].startswith("sha256:")
    assert summary["source_size"] > 0 and summary["target_size"] == summary["source_size"]
    assert set(summary["timings"]) >= {"pull", "convert", "push", "total"}
    # Not a terminal: progress comes as plain lines, not bars.
    assert "push: started" in proc.stderr


def test_platform_and_target_flags(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_multiplatform_image(tmp_path / "src")
    source = f"{registry_plain.host}/cli/multi:v1"
    push_layout(image.layout, source, tls_verify=False)
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}
    )
    target = f"{registry_plain.host}/cli/multi:only-arm"

    proc = accelctl(
        "convert",
        "--config",
        str(config),
        "--platform",
        "linux/arm64",
        "--target",
        target,
        "--output",
        "json",
        source,
    )

    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["target"] == target
    assert summary["platforms"] == ["linux/arm64/v8"]
    text = accelctl("convert", "--config", str(config), "--target", f"{target}-2", source)
    assert text.returncode == 0
    assert text.stdout.startswith("source  ") and f"target  {target}-2" in text.stdout


def test_failure_is_one_clear_line_and_nonzero_exit(registry_plain: RegistryServer, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}
    )
    missing = accelctl("convert", "--config", str(config), f"{registry_plain.host}/cli/absent:v1")
    assert missing.returncode != 0
    lines = [line for line in missing.stderr.splitlines() if line.startswith("accelctl: error:")]
    assert len(lines) == 1 and "absent" in lines[0]
    assert "Traceback" not in missing.stderr

    unconfigured = accelctl("convert", "--config", str(config), "other.example.com/x/y:z")
    assert unconfigured.returncode == 2
    assert "other.example.com" in unconfigured.stderr and "not configured" in unconfigured.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("converter: {driver: {type: nope}}\n")
    proc = accelctl("convert", "--config", str(bad), f"{registry_plain.host}/cli/absent:v1")
    assert proc.returncode == 2 and "converter.driver.type" in proc.stderr


def test_a_conversion_between_layouts_loads_no_http_stack(tmp_path: Path) -> None:
    image = build_docker_image(tmp_path / "src")
    config = write_config(tmp_path / "c.yaml", tmp_path / "work", {}, driver="estargz", tag_suffix="-esgz")
    # The whole command in a process of its own, then what it imported: start-up is what a user waits for.
    script = (
        "import json, sys\n"
        "from accel.cli.accelctl import main\n"
        f"code = main(['convert', '--config', {str(config)!r}, '--output', 'json',"
        f" 'oci:{image.layout}:latest', '--target', 'oci:{tmp_path / 'out'}:esgz'])\n"
        "heavy = [m for m in ('httpx', 'httpcore', 'rich.console') if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    summary = json.loads(proc.stdout)
    assert summary["target_digest"].startswith("sha256:"), proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}
