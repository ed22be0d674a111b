"""The converted-layer cache: never convert the same layer twice.

An entry maps (source layer digest, driver key) — the driver key names the driver, its version and every
option that changes its output — to the converted layer's descriptor, its diff_id, the driver's extra
bytes (Nydus: the layer's bootstrap and blob meta) and the places where the converted blob is known to
live (``host/repository`` or ``oci:/path``). A hit lets the converter mount the blob instead of pulling
and converting the source layer.

Entries live in SQLite under ``provider.work_dir`` (shared safely by acceld and accelctl) and are bounded
by ``provider.cache_size``, least recently used evicted. The cache is a hint, never trusted blindly: the
converter checks that the blob still exists before using an entry and drops entries whose blob vanished.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from accel.oci.manifest import Descriptor

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    source_digest TEXT NOT NULL,
    driver_key TEXT NOT NULL,
    descriptor TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    extra BLOB NOT NULL,
    locations TEXT NOT NULL,
    last_used REAL NOT NULL,
    PRIMARY KEY (source_digest, driver_key)
);
CREATE INDEX IF NOT EXISTS layers_last_used ON layers(last_used);
"""


@dataclass
class CacheEntry:
    descriptor: Descriptor
    diff_id: str
    extra: bytes
    locations: list[str]


class LayerCache:
    """Thread-safe; several processes may share the file (SQLite locking, WAL)."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, source_digest: str, driver_key: str) -> CacheEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT descriptor, diff_id, extra, locations FROM layers "
                "WHERE source_digest=? AND driver_key=?",
                (source_digest, driver_key),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE layers SET last_used=? WHERE source_digest=? AND driver_key=?",
                (time.time(), source_digest, driver_key),
            )
        descriptor, diff_id, extra, locations = row
        return CacheEntry(
            Descriptor.from_dict(json.loads(descriptor)), diff_id, bytes(extra), json.loads(locations)
        )

    def put(
        self,
        source_digest: str,
        driver_key: str,
        descriptor: Descriptor,
        diff_id: str,
        extra: bytes,
        locations: list[str],
    ) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        source_digest,
                        driver_key,
                        json.dumps(descriptor.to_dict()),
                        diff_id,
                        extra,
                        json.dumps(sorted(set(locations))),
                        time.time(),
                    ),
                )
                self._db.execute(
                    "DELETE FROM layers WHERE rowid IN "
                    "(SELECT rowid FROM layers ORDER BY last_used DESC LIMIT -1 OFFSET ?)",
                    (self.capacity,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_location(self, source_digest: str, driver_key: str, location: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT locations FROM layers WHERE source_digest=? AND driver_key=?",
                    (source_digest, driver_key),
                ).fetchone()
                if row is not None:
                    locations = sorted({*json.loads(row[0]), location})
                    self._db.execute(
                        "UPDATE layers SET locations=? WHERE source_digest=? AND driver_key=?",
                        (json.dumps(locations), source_digest, driver_key),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def discard(self, source_digest: str, driver_key: str) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM layers WHERE source_digest=? AND driver_key=?", (source_digest, driver_key)
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM layers").fetchone()[0])
