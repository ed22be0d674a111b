"""The converted-layer index in the shared PostgreSQL: a layer converted on one node is a hit on every node.

Entries name where each converted blob lives (``host/repository``), so another node mounts it from there;
each node's content store stays its own. The index is a hint, as in SQLite: when the database is away, a
lookup is a miss and a record is skipped (logged), never a failed conversion.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from accel.converter.cache import CacheEntry
from accel.database import DatabaseUnavailableError, Migration, PostgresDatabase
from accel.oci.manifest import Descriptor

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = (
    Migration(
        1,
        (
            """
            CREATE TABLE accel_layers (
                source_digest TEXT NOT NULL,
                driver_key TEXT NOT NULL,
                descriptor TEXT NOT NULL,
                diff_id TEXT NOT NULL,
                extra BYTEA NOT NULL,
                locations TEXT NOT NULL,
                last_used DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (source_digest, driver_key)
            )
            """,
            "CREATE INDEX accel_layers_last_used ON accel_layers (last_used)",
        ),
    ),
)


class PostgresLayerCache:
    def __init__(self, database: PostgresDatabase, capacity: int) -> None:
        self.database = database
        self.capacity = capacity
        database.migrate("layers", MIGRATIONS)

    def _hint(self, what: str, action: Callable[[], T], fallback: T) -> T:
        try:
            return action()
        except DatabaseUnavailableError as exc:
            log.warning("layer cache unavailable, %s skipped", what, extra={"error": exc.message})
            return fallback

    def get(self, source_digest: str, driver_key: str) -> CacheEntry | None:
        def lookup() -> CacheEntry | None:
            with self.database.connection() as conn:
                row = conn.execute(
                    "UPDATE accel_layers SET last_used=%s WHERE source_digest=%s AND driver_key=%s "
                    "RETURNING descriptor, diff_id, extra, locations",
                    (time.time(), source_digest, driver_key),
                ).fetchone()
            if row is None:
                return None
            return CacheEntry.from_row(*row)

        return self._hint("lookup", lookup, None)

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

        def record() -> None:
            with self.database.connection() as conn, conn.transaction():
                conn.execute(
                    "INSERT INTO accel_layers VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (source_digest, driver_key) DO UPDATE SET descriptor=EXCLUDED.descriptor, "
                    "diff_id=EXCLUDED.diff_id, extra=EXCLUDED.extra, locations=EXCLUDED.locations, "
                    "last_used=EXCLUDED.last_used",
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
                conn.execute(
                    "DELETE FROM accel_layers WHERE (source_digest, driver_key) IN (SELECT source_digest, "
                    "driver_key FROM accel_layers ORDER BY last_used DESC OFFSET %s)",
                    (self.capacity,),
                )

        self._hint("record", record, None)

    def add_location(self, source_digest: str, driver_key: str, location: str) -> None:
        def record() -> None:
            with self.database.connection() as conn, conn.transaction():
                row = conn.execute(
                    "SELECT locations FROM accel_layers WHERE source_digest=%s AND driver_key=%s FOR UPDATE",
                    (source_digest, driver_key),
                ).fetchone()
                if row is not None:
                    conn.execute(
                        "UPDATE accel_layers SET locations=%s WHERE source_digest=%s AND driver_key=%s",
                        (json.dumps(sorted({*json.loads(row[0]), location})), source_digest, driver_key),
                    )

        self._hint("record", record, None)

    def discard(self, source_digest: str, driver_key: str) -> None:
        def drop() -> None:
            with self.database.connection() as conn:
                conn.execute(
                    "DELETE FROM accel_layers WHERE source_digest=%s AND driver_key=%s",
                    (source_digest, driver_key),
                )

        self._hint("discard", drop, None)

    def __len__(self) -> int:
        with self.database.connection() as conn:
            row = conn.execute("SELECT COUNT(*) FROM accel_layers").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """The database is the caller's: it serves the task store too."""
