"""Progress reporting hooks of a conversion, and the result it returns."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

STAGES = ("pull", "convert", "push")

# Outcomes of making a blob present that move its bytes; every other outcome ("mounted", "exists",
# "linked", ...) completes the blob without a transfer and is shown as such.
TRANSFERRED = frozenset({"pulled", "uploaded"})
# What the part of a stage's total that never needed to move is called when the conversion ends (source
# layers a driver never read: mounted, cached, or already in the content store).
NOT_NEEDED = "not needed"


class Progress(Protocol):
    """Receives byte counts per stage (``pull``, ``convert``, ``push``); called from worker threads.

    ``stage`` gives the stage's total (None: unknown) and is called again when the total grows;
    ``advance`` counts bytes moved; ``skip`` counts bytes of the total that were completed without moving
    them, with how (``mounted``, ``exists``, ``linked``, ``not needed``). For a stage with a total, moved
    and skipped bytes add up to it once the conversion ends.
    """

    def stage(self, name: str, total: int | None) -> None: ...
    def advance(self, name: str, nbytes: int) -> None: ...
    def skip(self, name: str, nbytes: int, how: str) -> None: ...


class Sized(Protocol):
    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...


class Counters:
    """Thread-safe byte and time totals per stage, forwarded to an optional Progress.

    Blobs are counted once each and never beyond their size (a retried upload re-sends bytes), so a
    stage's moved and skipped bytes add up to its total.
    """

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self.bytes: dict[str, int] = dict.fromkeys(STAGES, 0)
        self.skipped: dict[str, dict[str, int]] = {name: {} for name in STAGES}
        self._spans: dict[str, tuple[float, float]] = {}
        self._totals: dict[str, int | None] = {}
        self._expected: dict[str, dict[str, int]] = {name: {} for name in STAGES}
        self._counted: dict[str, dict[str, int]] = {name: {} for name in STAGES}

    def stage(self, name: str, total: int | None) -> None:
        """Announce a stage whose total is not made of blobs (``convert``: None, unknown)."""
        with self._lock:
            self._totals[name] = total
        if self._progress:
            self._progress.stage(name, total)

    def expect(self, name: str, blobs: Iterable[Sized]) -> None:
        """Add blobs to a stage's total, each digest once; the Progress learns the new total."""
        with self._lock:
            expected = self._expected.setdefault(name, {})
            for blob in blobs:
                expected.setdefault(blob.digest, blob.size)
            total = sum(expected.values())
            changed = self._totals.get(name, -1) != total
            self._totals[name] = total
        if changed and self._progress:
            self._progress.stage(name, total)

    def blob(self, name: str, blob: Sized) -> BlobCounter:
        """The counter of one blob's transfer in ``name``; added to the stage's total if it is not in it."""
        self.expect(name, [blob])
        return BlobCounter(self, name, blob.digest, blob.size)

    def advance(self, name: str, nbytes: int) -> None:
        """Bytes done in a stage that does not count blobs (``convert``)."""
        with self._lock:
            self.bytes[name] = self.bytes.get(name, 0) + nbytes
        if self._progress:
            self._progress.advance(name, nbytes)

    def _count(self, name: str, digest: str, size: int, nbytes: int, how: str | None) -> None:
        with self._lock:
            counted = self._counted.setdefault(name, {})
            done = counted.get(digest, 0)
            nbytes = max(0, min(nbytes, size - done))
            if not nbytes:
                return
            counted[digest] = done + nbytes
            if how is None:
                self.bytes[name] = self.bytes.get(name, 0) + nbytes
            else:
                skipped = self.skipped.setdefault(name, {})
                skipped[how] = skipped.get(how, 0) + nbytes
        if self._progress:
            if how is None:
                self._progress.advance(name, nbytes)
            else:
                self._progress.skip(name, nbytes, how)

    def finish(self) -> None:
        """End of the conversion: what was expected and never moved or skipped was not needed."""
        for name in STAGES:
            with self._lock:
                expected = dict(self._expected.get(name, {}))
            for digest, size in expected.items():
                self._count(name, digest, size, size, NOT_NEEDED)

    def span(self, name: str, start: float, end: float) -> None:
        """Work of stage ``name`` ran from ``start`` to ``end`` (monotonic seconds); a stage's time is from
        its first start to its last end."""
        with self._lock:
            first, last = self._spans.get(name, (start, end))
            self._spans[name] = (min(first, start), max(last, end))

    def timings(self) -> dict[str, float]:
        """Wall seconds of every stage that ran, and ``overlap``: how much of them ran at the same time
        (their sum less the time any stage was running), so ``pull + convert + push - overlap`` is the
        time the stages took together."""
        with self._lock:
            spans = dict(self._spans)
        out = {name: 0.0 for name in STAGES}
        out.update({name: round(end - start, 3) for name, (start, end) in spans.items()})
        busy, reach = 0.0, float("-inf")
        for start, end in sorted(spans.values()):
            busy += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        out["overlap"] = round(max(0.0, sum(end - start for start, end in spans.values()) - busy), 3)
        return out


class BlobCounter:
    """Counts one blob: ``advance`` as bytes move (capped at its size), ``done`` with the outcome."""

    def __init__(self, counters: Counters, stage: str, digest: str, size: int) -> None:
        self._counters = counters
        self._stage = stage
        self._digest = digest
        self._size = size

    def advance(self, nbytes: int) -> None:
        self._counters._count(self._stage, self._digest, self._size, nbytes, None)

    def done(self, outcome: str) -> None:
        """The blob is present; the bytes not counted yet were moved or, by ``outcome``, skipped."""
        how = None if outcome in TRANSFERRED else outcome
        self._counters._count(self._stage, self._digest, self._size, self._size, how)


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
    cache_saved: int = 0
    """Source layer bytes the cache hits spared from download and conversion."""

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
