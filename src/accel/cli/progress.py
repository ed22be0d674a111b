"""Progress display for one-time conversions: rich bars on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from accel.converter.progress import STAGES

_LABELS = {"pull": "pulled", "convert": "converted", "push": "pushed"}


class BarProgress:
    """Three byte bars (pulled, converted, pushed) drawn with rich."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._progress = Progress(
            TextColumn("{task.description:>10}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def _task(self, name: str) -> TaskID:
        with self._lock:
            if name not in self._tasks:
                self._tasks[name] = self._progress.add_task(_LABELS.get(name, name), total=None)
            return self._tasks[name]

    def stage(self, name: str, total: int | None) -> None:
        self._progress.update(self._task(name), total=total)

    def advance(self, name: str, nbytes: int) -> None:
        self._progress.advance(self._task(name), nbytes)


class LogProgress:
    """One line per stage start and at most one progress line per stage every ``interval`` seconds."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 5.0) -> None:
        self._stream = stream
        self._interval = interval
        self._done: dict[str, int] = dict.fromkeys(STAGES, 0)
        self._total: dict[str, int | None] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for name, done in self._done.items():
                if done:
                    self._write(name, done)

    def stage(self, name: str, total: int | None) -> None:
        with self._lock:
            self._total[name] = total
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
                self._write(name, self._done[name])

    def _write(self, name: str, done: int) -> None:
        total = self._total.get(name)
        of = f"/{total}" if total else ""
        self._stream.write(f"{name}: {_LABELS.get(name, name)} {done}{of} bytes\n")
        self._stream.flush()
