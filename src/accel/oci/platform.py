"""Platforms (``os/arch[/variant]``): parsing, containerd-style normalisation, matching and filters.

``Platform.parse`` normalises (``aarch64`` → ``arm64``, ``linux/arm64/v8`` → ``linux/arm64``, ``linux/arm``
→ ``linux/arm/v7``); ``Platform.from_dict`` keeps what a manifest says verbatim (so re-encoding an index
does not change it) and matching always compares normalised forms.
"""

from __future__ import annotations

import platform as _host
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from accel.errors import ConfigError

_KNOWN_OS: Final = frozenset(
    {
        "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux",
        "nacl", "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows", "zos",
    }
)  # fmt: skip
_KNOWN_ARCH: Final = frozenset(
    {
        "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le", "loong64",
        "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "riscv", "riscv64",
        "s390", "s390x", "sparc", "sparc64", "wasm",
        "i386", "x86_64", "x86-64", "aarch64", "armhf", "armel",
    }
)  # fmt: skip
_PART_RE: Final = re.compile(r"^[A-Za-z0-9_.-]+$")
_OS_RE: Final = re.compile(r"^([A-Za-z0-9_.-]+)(?:\(([A-Za-z0-9_.-]*)\))?$")


@dataclass(frozen=True)
class Platform:
    """An OCI platform. ``extra`` keeps JSON fields the OCI spec does not define (Docker's ``features``)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def parse(cls, spec: str) -> Platform:
        """Parse ``os[(osversion)]/arch[/variant]``, ``os`` or ``arch`` alone, and normalise it."""
        parts = spec.strip().split("/")
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise ConfigError(f"invalid platform {spec!r}: expected os/arch[/variant]")
        os_match = _OS_RE.match(parts[0])
        if not os_match or not all(_PART_RE.match(p) for p in parts[1:]):
            raise ConfigError(f"invalid platform {spec!r}: unexpected characters")
        first, os_version = os_match.group(1).lower(), os_match.group(2) or None
        if len(parts) == 1:
            host = host_platform()
            if first in _KNOWN_OS or first == "macos":
                return cls(first, host.architecture, host.variant, os_version).normalized()
            if first in _KNOWN_ARCH and os_version is None:
                return cls(host.os, first).normalized()
            raise ConfigError(f"invalid platform {spec!r}: unknown operating system or architecture")
        variant = parts[2] if len(parts) == 3 else None
        return cls(first, parts[1], variant, os_version).normalized()

    def normalized(self) -> Platform:
        """The containerd-normalised form (lowercase, canonical arch names and default variants)."""
        os_name = self.os.lower()
        if os_name == "macos":
            os_name = "darwin"
        arch, variant = _normalize_arch(self.architecture, self.variant or "")
        return replace(self, os=os_name, architecture=arch, variant=variant or None)

    def matches(self, other: Platform) -> bool:
        """Same platform after normalisation (``os_version`` is compared only if we set one)."""
        a, b = self.normalized(), other.normalized()
        if (a.os, a.architecture, a.variant) != (b.os, b.architecture, b.variant):
            return False
        return a.os_version is None or a.os_version == b.os_version

    def to_dict(self) -> dict[str, Any]:
        """The OCI JSON object, in the Go struct's field order."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Platform:
        """Read an OCI platform object verbatim; ValueError when ``os``/``architecture`` are missing."""
        os_name, arch = data.get("os"), data.get("architecture")
        if not isinstance(os_name, str) or not isinstance(arch, str):
            raise ValueError("platform needs string 'os' and 'architecture'")
        variant, os_version = data.get("variant"), data.get("os.version")
        features = data.get("os.features") or []
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ValueError("platform 'os.features' must be a list of strings")
        known = {"os", "architecture", "variant", "os.version", "os.features"}
        return cls(
            os_name,
            arch,
            variant if isinstance(variant, str) and variant else None,
            os_version if isinstance(os_version, str) and os_version else None,
            tuple(features),
            {k: v for k, v in data.items() if k not in known},
        )

    def __str__(self) -> str:
        out = f"{self.os}/{self.architecture}"
        return f"{out}/{self.variant}" if self.variant else out


@dataclass(frozen=True)
class PlatformMatcher:
    """A platform filter (``converter.platforms``); no platforms means every platform."""

    platforms: tuple[Platform, ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[str]) -> PlatformMatcher:
        return cls(tuple(Platform.parse(s) for s in specs if s.strip()))

    @property
    def matches_all(self) -> bool:
        return not self.platforms

    def matches(self, platform: Platform | None) -> bool:
        """Whether ``platform`` is selected; a manifest without a platform is selected only by "all"."""
        if not self.platforms:
            return True
        return platform is not None and any(p.matches(platform) for p in self.platforms)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.platforms) or "all"


def host_platform() -> Platform:
    """The platform of this machine, normalised."""
    system = _host.system().lower() or "linux"
    return Platform(system, _host.machine() or "amd64").normalized()


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    # Same table as containerd's platforms.normalizeArch.
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
        return "arm", variant
    return arch, variant
