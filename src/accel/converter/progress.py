"""Progress reporting hooks of a conversion, and the result it returns."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

STAGES = ("pull", "convert", "push")


class Progress(Protocol):
    """Receives byte counts per stage (``pull``, ``convert``, ``push``); called from worker threads."""

    def stage(self, name: str, total: int | None) -> None: ...
    def advance(self, name: str, nbytes: int) -> None: ...


class Counters:
    """Thread-safe byte and time totals per stage, forwarded to an optional Progress."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self.bytes: dict[str, int] = dict.fromkeys(STAGES, 0)
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def stage(self, name: str, total: int | None) -> None:
        if self._progress:
            self._progress.stage(name, total)

    def advance(self, name: str, nbytes: int) -> None:
        with self._lock:
            self.bytes[name] = self.bytes.get(name, 0) + nbytes
        if self._progress:
            self._progress.advance(name, nbytes)

    def add_time(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds


@dataclass
class ConversionResult:
    """What one conversion did. Sizes sum config and layers over the converted platforms."""

    source: str
    target: str
    source_digest: str
    target_digest: str
    source_size: int
    target_size: int
    driver: str
    driver_version: str
    timings: dict[str, float] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    notes: list[str] = field(default_factory=list)
    platforms: list[str] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ResolvedSource:
    """A source image pinned to one manifest: what ``Converter.convert`` converts, without resolving the
    tag again (a tag moved since is not followed)."""

    reference: str
    """The reference as named (``host/repo:tag``); it is what the converted image's annotations record."""
    digest: str
    media_type: str
    data: bytes
    """The manifest or index, as fetched and verified against ``digest``."""


@dataclass
class SourceInspection:
    """What the daemon needs to decide whether and where to convert, from one manifest request."""

    reference: str
    digest: str
    media_type: str
    is_index: bool
    target: str
    resolved: ResolvedSource
    converted_by_us: str | None = None
    existing_target_digest: str | None = None
