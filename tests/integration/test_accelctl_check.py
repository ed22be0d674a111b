"""`accelctl check` as a user runs it: a real process against the real registry, its table, JSON and exit
codes; SOCI v1 indexes found as referrers of the image they index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.configs import write_config
from tests.support.faultproxy import FaultProxy
from tests.support.images import build_rich_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration


def accelctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accel.cli.accelctl", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def pushed(registry_plain: RegistryServer, tmp_path: Path) -> str:
    image = build_rich_image(tmp_path / "src", duplicate=False, big_zero_size=1 << 20)
    source = f"{registry_plain.host}/check/rich:v1"
    push_layout(image.layout, source, tls_verify=False)
    return source


def config_for(registry: RegistryServer, tmp_path: Path, driver: str, **options: str) -> str:
    path = write_config(
        tmp_path / f"{driver}.yaml",
        tmp_path / "work",
        {registry.host: registry.source()},
        driver=driver,
        driver_config=options,
        tag_suffix=f"-{driver}",
    )
    return str(path)


def test_converted_image_passes_with_a_table(
    registry_plain: RegistryServer, pushed: str, tmp_path: Path
) -> None:
    config = config_for(registry_plain, tmp_path, "estargz")
    assert accelctl("convert", "--config", config, pushed).returncode == 0

    proc = accelctl("check", "--config", config, f"{pushed}-estargz")

    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"target  {pushed}-estargz  sha256:")
    # The source is found from our annotations, in the registry, and compared path by path.
    assert lines[1].startswith("image   sha256:") and f"from {pushed}@sha256:" in lines[1]
    layers = [line for line in lines if line.startswith("  ok    layer ")]
    assert len(layers) == 3 and all(" estargz " in line for line in layers)
    assert any(line.startswith("  ok    tree ") and "paths equal" in line for line in lines)
    assert lines[-1] == "result  every check passed"


def test_soci_v1_index_is_found_as_a_referrer(
    registry_plain: RegistryServer, pushed: str, tmp_path: Path
) -> None:
    config = config_for(registry_plain, tmp_path, "soci", index_version="v1", min_layer_size="0")
    assert accelctl("convert", "--config", config, pushed).returncode == 0

    # v1 leaves the image as it is: the image checked is the source, its zTOCs come from the referrers.
    proc = accelctl("check", "--config", config, "--output", "json", pushed)

    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["target"] == pushed
    (image,) = report["images"]
    ztocs = [f for f in image["findings"] if f["check"] == "soci"]
    assert [f["layer"] for f in ztocs] == [0, 1, 2]
    assert all(f["ok"] and "spans" in f["detail"] for f in ztocs)


def test_a_difference_exits_1_with_the_first_difference(
    registry_plain: RegistryServer, pushed: str, tmp_path: Path
) -> None:
    config = config_for(registry_plain, tmp_path, "zstdchunked")
    assert accelctl("convert", "--config", config, pushed).returncode == 0
    other = build_rich_image(tmp_path / "other", duplicate=False, big_zero_size=2 << 20)
    other_ref = f"{registry_plain.host}/check/other:v1"
    push_layout(other.layout, other_ref, tls_verify=False)

    proc = accelctl("check", "--config", config, "--source", other_ref, f"{pushed}-zstdchunked")

    assert proc.returncode == 1
    assert proc.stderr.startswith(f"accelctl: error: check failed: tree: source: differs from {other_ref}")
    assert "/app/zeros.bin" in proc.stderr
    assert proc.stdout.splitlines()[-1] == "result  1 check(s) failed"
    # Without the comparison, the layers themselves hold.
    layers_only = accelctl("check", "--config", config, "--no-source", f"{pushed}-zstdchunked")
    assert layers_only.returncode == 0, layers_only.stderr


def test_only_configured_registries(registry_plain: RegistryServer, pushed: str, tmp_path: Path) -> None:
    proc = accelctl("check", f"{pushed}-estargz")

    assert proc.returncode != 0
    assert registry_plain.host in proc.stderr and "Traceback" not in proc.stderr


def test_lazy_reads_are_ranged_requests_to_the_registry(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """What `--lazy` reports fetching is what the registry was asked for, in ranged GETs only."""
    image = build_rich_image(tmp_path / "src", duplicate=False, payload_size=4 << 20)
    push_layout(image.layout, f"{registry_plain.host}/check/lazy:v1", tls_verify=False)
    source = f"{fault_proxy.host}/check/lazy:v1"  # the same registry, every request recorded
    config = str(
        write_config(
            tmp_path / "c.yaml",
            tmp_path / "work",
            {fault_proxy.host: registry_plain.source()},
            driver="estargz",
            tag_suffix="-esgz",
        )
    )
    assert accelctl("convert", "--config", config, source).returncode == 0
    fault_proxy.clear()

    proc = accelctl(
        "check",
        "--config",
        config,
        "--output",
        "json",
        f"{source}-esgz",
        "--lazy",
        "/app/README",
        "/etc/hostname",
    )

    assert proc.returncode == 0, proc.stderr
    lazy = json.loads(proc.stdout)["images"][0]["lazy"]
    assert [f["path"] for f in lazy["files"]] == ["/app/README", "/etc/hostname"]
    ranged = [
        _range_length(headers["Range"])
        for method, path, headers in fault_proxy.requests
        if method == "GET" and "/blobs/" in path and "Range" in headers
    ]
    assert len(ranged) == lazy["requests"] and sum(ranged) == lazy["fetched_bytes"]
    assert lazy["fetched_bytes"] < 0.05 * lazy["image_bytes"]


def _range_length(header: str) -> int:
    first, _, last = header.removeprefix("bytes=").partition("-")
    return int(last) - int(first) + 1
