"""A scripted stand-in for accel.converter.Converter (tests only): same method names and result fields.

Targets it "pushes" and every conversion it runs are recorded (in memory, and in ``state_dir`` when given,
so that a real acceld process can be killed and restarted and the test still sees what happened).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from accel.config import Config
from accel.converter.progress import ConversionResult, ResolvedSource, SourceInspection
from accel.errors import AccelError, CanceledError


def digest_of(source: str) -> str:
    return "sha256:" + hashlib.sha256(source.encode()).hexdigest()


class FakeConverter:
    driver_name = "fake"
    driver_version = "1"

    def __init__(self, *, suffix: str = "-fake", delay: float = 0.0, state_dir: Path | None = None) -> None:
        self.suffix = suffix
        self.delay = delay
        self.state_dir = state_dir
        self.lock = threading.Lock()
        self.digests: dict[str, str] = {}  # source -> current digest (a tag can move)
        self.targets: dict[str, str] = {}  # target -> source digest recorded in its annotation
        self.conversions: list[str] = []
        self.inspections: list[str] = []
        self.errors: list[AccelError] = []  # raised by the next convert calls, in order
        self.inspect_errors: list[AccelError] = []
        self.gate: threading.Event | None = None  # convert blocks until set (or canceled)
        self.started = threading.Event()
        self.closed = False
        self.active = 0
        self.max_active = 0
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            targets = state_dir / "targets.json"
            if targets.exists():
                self.targets = json.loads(targets.read_text())

    def driver_key(self) -> str:
        return "fake/1"

    def digest(self, source: str) -> str:
        return self.digests.get(source) or digest_of(source)

    def inspect(self, source: str, *, digest: str | None = None) -> SourceInspection:
        with self.lock:
            self.inspections.append(source)
            if self.inspect_errors:
                raise self.inspect_errors.pop(0)
        digest = digest or self.digest(source)
        target = source + self.suffix
        own = f"tag ends with {self.suffix}" if source.endswith(self.suffix) else None
        existing = digest if self.targets.get(target) == digest else None
        return SourceInspection(
            reference=source,
            digest=digest,
            media_type="application/vnd.oci.image.manifest.v1+json",
            is_index=False,
            target=target,
            resolved=ResolvedSource(source, digest, "application/vnd.oci.image.manifest.v1+json", b"{}"),
            converted_by_us=own,
            existing_target_digest=existing,
        )

    def convert(
        self,
        source: str | ResolvedSource,
        *,
        target: str | None = None,
        progress: Any = None,
        cancel: threading.Event | None = None,
    ) -> ConversionResult:
        self.started.set()
        with self.lock:
            error = self.errors.pop(0) if self.errors else None
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if error is not None:
                raise error
            if isinstance(source, ResolvedSource):
                return self._convert(source.reference, source.digest, target, cancel)
            return self._convert(source, self.digest(source), target, cancel)
        finally:
            with self.lock:
                self.active -= 1

    def _convert(
        self, source: str, digest: str, target: str | None, cancel: threading.Event | None
    ) -> ConversionResult:
        deadline = time.monotonic() + self.delay
        while (self.gate is not None and not self.gate.is_set()) or time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise CanceledError("canceled")
            time.sleep(0.01)
        if cancel is not None and cancel.is_set():
            raise CanceledError("canceled")
        target = target or source + self.suffix
        with self.lock:
            self.conversions.append(source)
            self.targets[target] = digest
            if self.state_dir is not None:
                with open(self.state_dir / "conversions.log", "a") as log:
                    log.write(source + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                tmp = self.state_dir / f"targets.json.{os.getpid()}.tmp"  # nodes may share the dir
                tmp.write_text(json.dumps(self.targets))
                tmp.replace(self.state_dir / "targets.json")
        return ConversionResult(
            source=source,
            target=target,
            source_digest=digest,
            target_digest=digest_of(target),
            source_size=1000,
            target_size=1200,
            driver="fake",
            driver_version="1",
            timings={"pull": 0.01, "convert": 0.02, "push": 0.03, "total": 0.06},
            bytes_in=1000,
            bytes_out=1200,
        )

    def close(self) -> None:
        self.closed = True


def factory(config: Config) -> FakeConverter:
    """For ``ACCELD_CONVERTER_FACTORY=tests.unit.tasks.fake_converter:factory`` in real-process tests."""
    delay = float(os.environ.get("FAKE_CONVERTER_DELAY", "0"))
    return FakeConverter(delay=delay, state_dir=config.provider.work_dir / "fake-converter")
