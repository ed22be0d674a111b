from __future__ import annotations

import platform as pyplatform

import pytest

from accel.errors import ConfigError
from accel.oci.platform import Platform, PlatformMatcher, host_platform

NORMALISED = [
    ("linux/amd64", ("linux", "amd64", None)),
    ("linux/x86_64", ("linux", "amd64", None)),
    ("linux/x86-64", ("linux", "amd64", None)),
    ("linux/amd64/v1", ("linux", "amd64", None)),
    ("linux/amd64/v3", ("linux", "amd64", "v3")),
    ("linux/arm64", ("linux", "arm64", None)),
    ("linux/arm64/v8", ("linux", "arm64", None)),
    ("linux/aarch64", ("linux", "arm64", None)),
    ("linux/arm64/9", ("linux", "arm64", "v9")),
    ("linux/arm", ("linux", "arm", "v7")),
    ("linux/arm/7", ("linux", "arm", "v7")),
    ("linux/arm/v6", ("linux", "arm", "v6")),
    ("linux/arm/5", ("linux", "arm", "v5")),
    ("linux/armhf", ("linux", "arm", "v7")),
    ("linux/armel", ("linux", "arm", "v6")),
    ("linux/i386", ("linux", "386", None)),
    ("Linux/AMD64", ("linux", "amd64", None)),
    ("macos/arm64", ("darwin", "arm64", None)),
    ("linux/s390x", ("linux", "s390x", None)),
]


@pytest.mark.parametrize(("spec", "expected"), NORMALISED)
def test_parse_normalises(spec: str, expected: tuple[str, str, str | None]) -> None:
    p = Platform.parse(spec)
    assert (p.os, p.architecture, p.variant) == expected


def test_parse_single_component_uses_host() -> None:
    host = host_platform()
    assert Platform.parse("linux") == Platform("linux", host.architecture, host.variant)
    assert Platform.parse("arm64") == Platform(host.os, "arm64")


def test_parse_os_version() -> None:
    p = Platform.parse("windows(10.0.17763)/amd64")
    assert (p.os, p.os_version, p.architecture) == ("windows", "10.0.17763", "amd64")


@pytest.mark.parametrize(
    "spec", ["", "linux/", "/amd64", "a/b/c/d", "linux/amd 64", "plan10", "linux/arm;64"]
)
def test_parse_invalid(spec: str) -> None:
    with pytest.raises(ConfigError):
        Platform.parse(spec)


def test_equivalent_forms_are_equal() -> None:
    assert Platform.parse("linux/arm64") == Platform.parse("linux/arm64/v8")
    assert Platform.parse("linux/arm") == Platform.parse("linux/armhf")


def test_matches() -> None:
    arm64_v8 = Platform.from_dict({"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert arm64_v8.variant == "v8"  # from_dict keeps what the manifest says
    assert Platform.parse("linux/arm64").matches(arm64_v8)
    assert Platform.parse("linux/aarch64").matches(arm64_v8)
    assert not Platform.parse("linux/amd64").matches(arm64_v8)
    arm_v6 = Platform.from_dict({"os": "linux", "architecture": "arm", "variant": "v6"})
    assert not Platform.parse("linux/arm").matches(arm_v6)
    assert Platform.parse("linux/arm/v6").matches(arm_v6)
    assert not Platform.parse("linux/amd64/v2").matches(Platform("linux", "amd64"))
    win = Platform("windows", "amd64", os_version="10.0.17763.1")
    assert Platform("windows", "amd64").matches(win)
    assert not Platform("windows", "amd64", os_version="10.0.20348").matches(win)


def test_dict_round_trip_keeps_unknown_fields() -> None:
    data = {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.17763.1",
        "os.features": ["win32k"],
        "variant": "v2",
        "features": ["sse4"],
    }
    p = Platform.from_dict(data)
    assert p.os_features == ("win32k",)
    assert p.to_dict() == data
    assert list(p.to_dict()) == list(data)  # Go field order, unknown fields after
    assert Platform("linux", "amd64").to_dict() == {"architecture": "amd64", "os": "linux"}
    with pytest.raises(ValueError):
        Platform.from_dict({"os": "linux"})


def test_matcher() -> None:
    everything = PlatformMatcher.parse([])
    assert everything.matches_all
    assert everything.matches(None)
    assert everything.matches(Platform("linux", "riscv64"))
    two = PlatformMatcher.parse(["linux/amd64", " linux/arm64 ", ""])
    assert len(two.platforms) == 2
    assert two.matches(Platform("linux", "amd64"))
    assert two.matches(Platform("linux", "arm64", "v8"))
    assert not two.matches(Platform("linux", "arm", "v7"))
    assert not two.matches(None)
    assert str(two) == "linux/amd64,linux/arm64"


def test_host_platform() -> None:
    host = host_platform()
    assert host.os == pyplatform.system().lower()
    machine = pyplatform.machine().lower()
    expected = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    assert host.architecture == expected
