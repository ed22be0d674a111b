"""Where `accelctl convert` writes, as a user runs it: the target tag follows the driver used, a tag it
did not make is never replaced without --force, and --platform must name a platform the source has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.configs import write_config
from tests.support.images import build_simple_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration


def accelctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accel.cli.accelctl", *args], capture_output=True, text=True, timeout=300
    )


def _push(registry: RegistryServer, tmp_path: Path, name: str, ref: str) -> str:
    image = build_simple_image(tmp_path / name, {"etc/name": name.encode()})
    return push_layout(image.layout, f"{registry.host}/{ref}", tls_verify=False)


def _tags(registry: RegistryServer, repo: str) -> list[str]:
    proc = subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", f"docker://{registry.host}/{repo}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return sorted(json.loads(proc.stdout)["Tags"])


def test_driver_flag_writes_that_drivers_suffix(registry_plain: RegistryServer, tmp_path: Path) -> None:
    repo = f"cli-{tmp_path.name.lower()}/app"
    _push(registry_plain, tmp_path, "src", f"{repo}:v1")
    sources = {registry_plain.host: registry_plain.source()}
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", sources, driver="estargz", tag_suffix="-esgz"
    )

    proc = accelctl(
        "convert",
        "--config",
        str(config),
        "--driver",
        "nydus",
        "--output",
        "json",
        f"{registry_plain.host}/{repo}:v1",
    )

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target"] == f"{registry_plain.host}/{repo}:v1-nydus"
    assert _tags(registry_plain, repo) == ["v1", "v1-nydus"]


def test_a_foreign_target_tag_needs_force(registry_plain: RegistryServer, tmp_path: Path) -> None:
    repo = f"cli-{tmp_path.name.lower()}/app"
    source = f"{registry_plain.host}/{repo}:v1"
    _push(registry_plain, tmp_path, "src", f"{repo}:v1")
    foreign = _push(registry_plain, tmp_path, "foreign", f"{repo}:v1-oci")
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}
    )

    refused = accelctl("convert", "--config", str(config), source)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"accelctl: error: target {source}-oci exists and holds {foreign}")
    assert "--force" in refused.stderr

    forced = accelctl("convert", "--config", str(config), "--force", "--output", "json", source)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["target_digest"] != foreign


def test_platform_must_be_well_formed_and_present(registry_plain: RegistryServer, tmp_path: Path) -> None:
    repo = f"cli-{tmp_path.name.lower()}/app"
    source = f"{registry_plain.host}/{repo}:v1"
    _push(registry_plain, tmp_path, "src", f"{repo}:v1")
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}
    )

    malformed = accelctl("convert", "--config", str(config), "--platform", "arm64", source)
    assert malformed.returncode == 2
    assert "invalid platform 'arm64'" in malformed.stderr

    missing = accelctl("convert", "--config", str(config), "--platform", "linux/arm64", source)
    assert missing.returncode == 1
    assert "single-platform image (linux/amd64)" in missing.stderr and "linux/arm64" in missing.stderr
    assert _tags(registry_plain, repo) == ["v1"], "nothing may be pushed for a platform the source lacks"
