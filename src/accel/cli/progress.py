"""Progress display for one-time conversions: rich bars on a terminal (``bars.py``, imported only then:
rich's console costs start-up time a piped or logged run does not need), plain log lines otherwise.

Both show, per stage, the bytes moved against the stage's total, and beside them the bytes that were
completed without moving (mounted, already there, linked, not needed), so a finished bar is full and its
numbers add up.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from rich.filesize import decimal

from accel.converter.progress import STAGES

LABELS = {"pull": "pulled", "convert": "converted", "push": "pushed"}
_SKIP_WORDS = {"exists": "already there"}


def describe_skipped(skipped: dict[str, int], size: str = "bytes") -> str:
    """``12.3 kB mounted, 4.0 kB exists`` (or raw byte counts with ``size="bytes"``); empty if none."""
    parts = []
    for how, nbytes in skipped.items():
        amount = decimal(nbytes) if size == "decimal" else f"{nbytes} bytes"
        parts.append(f"{amount} {_SKIP_WORDS.get(how, how)}")
    return ", ".join(parts)


class LogProgress:
    """One line per stage start and at most one progress line per stage every ``interval`` seconds."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 5.0) -> None:
        self._stream = stream
        self._interval = interval
        self._done: dict[str, int] = dict.fromkeys(STAGES, 0)
        self._skipped: dict[str, dict[str, int]] = {}
        self._total: dict[str, int | None] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for name in STAGES:
                if self._done.get(name) or self._skipped.get(name):
                    self._write(name)

    def stage(self, name: str, total: int | None) -> None:
        with self._lock:
            first = name not in self._total
            self._total[name] = total
            if not first:
                return  # the total grew as more blobs became known; the final line shows it
            self._last[name] = time.monotonic()
            size = f" ({total} bytes)" if total else ""
            self._stream.write(f"{name}: started{size}\n")
            self._stream.flush()

    def advance(self, name: str, nbytes: int) -> None:
        with self._lock:
            self._done[name] = self._done.get(name, 0) + nbytes
            now = time.monotonic()
            if now - self._last.get(name, 0.0) >= self._interval:
                self._last[name] = now
                self._write(name)

    def skip(self, name: str, nbytes: int, how: str) -> None:
        with self._lock:
            skipped = self._skipped.setdefault(name, {})
            skipped[how] = skipped.get(how, 0) + nbytes

    def _write(self, name: str) -> None:
        skipped = self._skipped.get(name, {})
        done = self._done.get(name, 0) + sum(skipped.values())
        total = self._total.get(name)
        of = f"/{total}" if total is not None else ""
        line = f"{name}: {LABELS.get(name, name)} {done}{of} bytes"
        if skipped:
            line += f" ({self._done.get(name, 0)} bytes moved, {describe_skipped(skipped)})"
        self._stream.write(line + "\n")
        self._stream.flush()
