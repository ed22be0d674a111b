"""What `accelctl` tells a user and leaves behind: exit codes, failure details, progress that adds up."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from accel.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from accel.oci.layout import OCILayout
from tests.integration.test_accelctl_convert import accelctl
from tests.support.configs import write_config
from tests.support.images import build_docker_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration


def _pushed_image(registry: RegistryServer, tmp_path: Path, name: str) -> tuple[str, list[str]]:
    image = build_docker_image(tmp_path / "src")
    source = f"{registry.host}/{name}:v1"
    push_layout(image.layout, source, format=None, tls_verify=False)
    return source, [layer.digest for layer in image.images[0].layers]


def test_soci_failure_lists_every_skipped_layer(registry_plain: RegistryServer, tmp_path: Path) -> None:
    source, layers = _pushed_image(registry_plain, tmp_path, "outcomes/soci")
    # soci's default min_layer_size (10 MiB) is larger than every layer of the test image.
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}, driver="soci"
    )

    text = accelctl("convert", "--config", str(config), source)
    as_json = accelctl("convert", "--config", str(config), "--output", "json", source)

    assert text.returncode == as_json.returncode == EXIT_FAILED
    [line] = [line for line in text.stderr.splitlines() if line.startswith("accelctl: error:")]
    assert "see the notes" not in line
    for digest in layers:
        assert digest in line
    assert line.count("min_layer_size is 10485760") == len(layers)
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "ERR_CONVERT_FAILED" and error["exit_code"] == EXIT_FAILED
    assert len(error["notes"]) == len(layers)
    for digest, note in zip(layers, error["notes"], strict=True):
        assert note.startswith(f"layer {digest}: not indexed:") and "min_layer_size is 10485760" in note


def test_layout_target_without_tag_is_a_usage_error_and_writes_nothing(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    source, _ = _pushed_image(registry_plain, tmp_path, "outcomes/notag")
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}
    )
    target = tmp_path / "out"

    proc = accelctl("convert", "--config", str(config), "--target", f"oci:{target}", source)

    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert proc.stderr.startswith("accelctl: error:") and "needs a tag" in proc.stderr
    assert not target.exists()


def test_failed_conversion_leaves_no_layout_and_no_partial_files(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    source, _ = _pushed_image(registry_plain, tmp_path, "outcomes/leftovers")
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}, driver="soci"
    )
    new = tmp_path / "new-layout"
    failed = accelctl("convert", "--config", str(config), "--target", f"oci:{new}:x", source)
    assert failed.returncode == EXIT_FAILED
    assert not new.exists(), "the layout this run created is removed with the failure"

    existing = OCILayout(tmp_path / "existing").init()
    before = sorted(p.relative_to(existing.path) for p in existing.path.rglob("*"))
    failed = accelctl("convert", "--config", str(config), "--target", f"oci:{existing.path}:x", source)
    assert failed.returncode == EXIT_FAILED
    assert sorted(p.relative_to(existing.path) for p in existing.path.rglob("*")) == before


def test_unknown_driver_is_a_usage_error_and_help_lists_drivers(tmp_path: Path) -> None:
    from accel.drivers import available_drivers

    usage = accelctl("convert", "--help")
    assert usage.returncode == EXIT_OK
    for name in available_drivers():
        assert name in usage.stdout
    wrong = accelctl("convert", "--config", str(tmp_path / "none.yaml"), "--driver", "nydos", "x/y:z")
    assert wrong.returncode == EXIT_USAGE and "nydos" in wrong.stderr


def _final_bar(screen: str, label: str) -> str:
    """The last drawing of one bar: rich redraws in place, the last one is what the user is left with."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # colours and cursor moves
    rows = [row for row in re.split(r"[\r\n]", plain) if label in row]
    assert rows, f"no {label!r} bar in {screen[-2000:]!r}"
    return rows[-1]


def test_terminal_bars_are_full_and_name_mounted_blobs(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    source, _ = _pushed_image(registry_plain, tmp_path, "outcomes/bars")
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}
    )
    target = f"{registry_plain.host}/outcomes/bars-elsewhere:v1"  # another repository: blobs are mounted
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accel.cli.accelctl",
            "convert",
            "--config",
            str(config),
            "--target",
            target,
            source,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    screen = b""
    while True:  # read until the child closes the terminal (EOF or EIO on Linux)
        ready, _, _ = select.select([master], [], [], 120)
        assert ready, "accelctl printed nothing for two minutes"
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    assert proc.wait(timeout=60) == EXIT_OK
    text = screen.decode(errors="replace")

    pulled, pushed = _final_bar(text, "pulled"), _final_bar(text, "pushed")
    # The oci driver pulls nothing and mounts every blob: both bars are full, with the reason beside.
    assert "/?" not in pulled and "not needed" in pulled, pulled
    amounts = re.search(r"(\d[\d.]* (?:bytes|[kMG]B))/(\d[\d.]* (?:bytes|[kMG]B))", pushed)
    assert amounts is not None, pushed
    assert amounts.group(1) == "0 bytes" and f"({amounts.group(2)} mounted)" in pushed, pushed


def test_log_lines_add_up_with_mounted_blobs(registry_plain: RegistryServer, tmp_path: Path) -> None:
    source, _ = _pushed_image(registry_plain, tmp_path, "outcomes/logs")
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "work", {registry_plain.host: registry_plain.source()}
    )
    target = f"{registry_plain.host}/outcomes/logs-elsewhere:v1"

    proc = accelctl("convert", "--config", str(config), "--output", "json", "--target", target, source)

    assert proc.returncode == EXIT_OK, proc.stderr
    summary = json.loads(proc.stdout)
    lines = proc.stderr.splitlines()
    [started] = [line for line in lines if line.startswith("pull: started")]
    assert re.fullmatch(r"pull: started \(\d+ bytes\)", started), "the pull total is known up front"
    [push_end] = [line for line in lines if line.startswith("push: pushed")]
    parsed = re.fullmatch(
        r"push: pushed (\d+)/(\d+) bytes \((\d+) bytes moved, (\d+) bytes mounted\)", push_end
    )
    assert parsed is not None, push_end
    done, total, moved, mounted = map(int, parsed.groups())
    assert done == total == moved + mounted and mounted == summary["target_size"] and moved == 0
