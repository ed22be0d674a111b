"""Rich progress bars for ``accelctl convert`` on a terminal."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from accel.cli.progress import LABELS, describe_skipped


class _BytesColumn(ProgressColumn):
    """``moved/total`` in decimal units; just ``moved`` when the total is unknown (never ``/?``)."""

    def render(self, task: Task) -> Text:
        moved = decimal(int(task.fields.get("moved", 0)))
        if task.total is None:
            return Text(moved, style="progress.download")
        return Text(f"{moved}/{decimal(int(task.total))}", style="progress.download")


class _SpeedColumn(ProgressColumn):
    """Average speed of the bytes moved; rich's own column would count mounted and skipped bytes too."""

    def render(self, task: Task) -> Text:
        moved, elapsed = int(task.fields.get("moved", 0)), task.elapsed
        if not moved or not elapsed:
            return Text("", style="progress.data.speed")
        return Text(f"{decimal(int(moved / elapsed))}/s", style="progress.data.speed")


class BarProgress:
    """Three byte bars (pulled, converted, pushed) drawn with rich."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._progress = Progress(
            TextColumn("{task.description:>10}"),
            BarColumn(),
            _BytesColumn(),
            _SpeedColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[skipped]}"),
            console=Console(file=stream),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._moved: dict[str, int] = {}
        self._skipped: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def _task(self, name: str) -> TaskID:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(
                LABELS.get(name, name), total=None, moved=0, skipped=""
            )
        return self._tasks[name]

    def stage(self, name: str, total: int | None) -> None:
        with self._lock:
            self._progress.update(self._task(name), total=total)

    def advance(self, name: str, nbytes: int) -> None:
        with self._lock:
            self._moved[name] = self._moved.get(name, 0) + nbytes
            self._progress.update(self._task(name), advance=nbytes, moved=self._moved[name])

    def skip(self, name: str, nbytes: int, how: str) -> None:
        with self._lock:
            skipped = self._skipped.setdefault(name, {})
            skipped[how] = skipped.get(how, 0) + nbytes
            text = f"({describe_skipped(skipped, 'decimal')})"
            # Skipped bytes fill the bar; the byte column shows only what moved, the text what did not.
            self._progress.update(self._task(name), advance=nbytes, skipped=text)
