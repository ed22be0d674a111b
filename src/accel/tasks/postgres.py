"""Tasks in a shared PostgreSQL database: one queue for every acceld node.

The same contract as :class:`~accel.tasks.store.SQLiteTaskStore`, written for many writers: a claim is one
``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)``, so nodes never wait on each other's row locks
and never take the same task; new and re-queued work is announced with NOTIFY so idle nodes wake at once;
and the twin lock is a unique partial index, so two nodes never convert the same digest at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from accel.database import Migration, PostgresDatabase
from accel.tasks.model import Task, TaskStatus, TaskSummary, format_time, utcnow
from accel.tasks.store import (
    ACTIVE_STATUSES,
    COLUMNS,
    FINAL_STATUSES,
    INTERRUPTED_TOO_OFTEN,
    task_from_row,
    task_to_row,
)

CHANNEL = "accel_tasks"
_PENDING = TaskStatus.PENDING.value
_PROCESSING = TaskStatus.PROCESSING.value

MIGRATIONS = (
    Migration(
        1,
        (
            """
            CREATE TABLE accel_tasks (
                seq BIGSERIAL NOT NULL UNIQUE,
                id TEXT PRIMARY KEY,
                created TEXT NOT NULL,
                started TEXT,
                finished TEXT,
                source TEXT NOT NULL,
                target TEXT NOT NULL DEFAULT '',
                source_digest TEXT NOT NULL DEFAULT '',
                target_digest TEXT NOT NULL DEFAULT '',
                driver TEXT NOT NULL DEFAULT '',
                driver_key TEXT NOT NULL DEFAULT '',
                source_size BIGINT NOT NULL DEFAULT 0,
                target_size BIGINT NOT NULL DEFAULT 0,
                status TEXT NOT NULL,
                reason TEXT NOT NULL DEFAULT '',
                attempts INTEGER NOT NULL DEFAULT 0,
                not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
                cache_hits INTEGER NOT NULL DEFAULT 0,
                cache_misses INTEGER NOT NULL DEFAULT 0,
                cache_saved BIGINT NOT NULL DEFAULT 0,
                bytes_in BIGINT NOT NULL DEFAULT 0,
                bytes_out BIGINT NOT NULL DEFAULT 0,
                timings TEXT NOT NULL DEFAULT '{}',
                node TEXT NOT NULL DEFAULT '',
                lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
                cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
                converting BOOLEAN NOT NULL DEFAULT FALSE
            )
            """,
            f"CREATE INDEX accel_tasks_pending ON accel_tasks (not_before, seq) WHERE status='{_PENDING}'",
            f"CREATE INDEX accel_tasks_running ON accel_tasks (lease_until) WHERE status='{_PROCESSING}'",
            "CREATE INDEX accel_tasks_source ON accel_tasks (source, driver_key, status)",
            "CREATE INDEX accel_tasks_created ON accel_tasks (created, seq)",
            "CREATE INDEX accel_tasks_status ON accel_tasks (status, finished)",
            # The twin lock: one conversion of a (digest, driver key, target) at a time, across all nodes.
            "CREATE UNIQUE INDEX accel_tasks_converting ON accel_tasks (source_digest, driver_key, target) "
            f"WHERE converting AND status='{_PROCESSING}'",
        ),
    ),
)

_INSERT = f"INSERT INTO accel_tasks ({','.join(COLUMNS)}) VALUES ({','.join(['%s'] * len(COLUMNS))})"
_UPDATE = f"UPDATE accel_tasks SET {','.join(f'{c}=%s' for c in COLUMNS[1:])} WHERE id=%s"
_UPDATE_IF = _UPDATE + " AND status=%s RETURNING 1"


def _notifying(update: str) -> str:
    """``update`` (``… RETURNING 1``) that also tells the other nodes, in the same statement, when a row
    changed (the channel is the last parameter)."""
    return f"WITH changed AS ({update}) SELECT pg_notify(%s, '') FROM (SELECT 1 FROM changed LIMIT 1) AS c"


_SAVE_NOTIFYING = _notifying(_UPDATE + " RETURNING 1")
_UPDATE_IF_NOTIFYING = _notifying(_UPDATE_IF)


class PostgresTaskStore:
    """Thread-safe. Calls inside :meth:`transaction` on the same thread share its connection."""

    def __init__(self, database: PostgresDatabase) -> None:
        from psycopg.rows import dict_row

        self.database = database
        self._row_factory = dict_row
        self._local = threading.local()
        database.migrate("tasks", MIGRATIONS)

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self.database.connection() as conn:
            conn.row_factory = self._row_factory
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._atomic() as conn:
            if getattr(self._local, "conn", None) is conn:
                yield  # nested: joins the outer transaction
                return
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    @contextmanager
    def _atomic(self) -> Iterator[Any]:
        """A connection in a transaction: the caller's (:meth:`transaction`), or one of its own."""
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self._conn() as conn, conn.transaction():
            yield conn

    def _notify(self, conn: Any) -> None:
        # Delivered at commit, to every node LISTENing (this one too, harmlessly).
        conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever any node adds or re-queues work (and after a lost connection)."""
        self.database.listen(CHANNEL, callback)

    def add(self, task: Task) -> None:
        self.add_many([task])

    def add_many(self, tasks: list[Task]) -> None:
        with self._atomic() as conn:
            with conn.cursor() as cur:
                cur.executemany(_INSERT, [task_to_row(t) for t in tasks])
            self._notify(conn)

    def delete(self, task_ids: Sequence[str]) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM accel_tasks WHERE id = ANY(%s)", (list(task_ids),))

    def save(self, task: Task) -> None:
        row = task_to_row(task)
        with self._conn() as conn:
            # One statement, one round trip: the write and, for runnable work, the wake-up (atomically).
            if task.status is TaskStatus.PENDING and task.not_before == 0:
                conn.execute(_SAVE_NOTIFYING, (*row[1:], row[0], CHANNEL))
            else:
                conn.execute(_UPDATE, (*row[1:], row[0]))

    def save_if(self, task: Task, expected: TaskStatus) -> bool:
        row = task_to_row(task)
        with self._conn() as conn:
            if task.status is TaskStatus.PENDING:
                cur = conn.execute(_UPDATE_IF_NOTIFYING, (*row[1:], row[0], expected.value, CHANNEL))
            else:
                cur = conn.execute(_UPDATE_IF, (*row[1:], row[0], expected.value))
            return cur.fetchone() is not None

    def get(self, task_id: str) -> Task | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM accel_tasks WHERE id=%s", (task_id,)).fetchone()
        return task_from_row(row) if row else None

    def list_tasks(self, *, limit: int = 1000, status: TaskStatus | None = None) -> list[Task]:
        with self._conn() as conn:
            if status is None:
                rows = conn.execute(
                    "SELECT * FROM accel_tasks ORDER BY created DESC, seq DESC LIMIT %s", (limit,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM accel_tasks WHERE status=%s ORDER BY created DESC, seq DESC LIMIT %s",
                    (status.value, limit),
                ).fetchall()
        return [task_from_row(r) for r in rows]

    def find_active(self, source: str, driver_key: str) -> list[Task]:
        return self.find_active_many([source], driver_key).get(source, [])

    def find_active_many(self, sources: Sequence[str], driver_key: str) -> dict[str, list[Task]]:
        found: dict[str, list[Task]] = {}
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT * FROM accel_tasks WHERE source = ANY(%s) AND driver_key=%s AND status = ANY(%s) "
                "ORDER BY seq",
                (list(dict.fromkeys(sources)), driver_key, list(ACTIVE_STATUSES)),
            ).fetchall()
        for row in rows:
            found.setdefault(row["source"], []).append(task_from_row(row))
        return found

    def claim_next(self, now: float, node: str, lease_until: float) -> Task | None:
        # SKIP LOCKED: a row another node is claiming right now is passed over, not waited for.
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE accel_tasks SET status=%s, node=%s, lease_until=%s, cancel_requested=FALSE, "
                "converting=FALSE, attempts=attempts+1, started=COALESCE(started, %s), reason='' "
                "WHERE id = (SELECT id FROM accel_tasks WHERE status=%s AND not_before<=%s "
                "ORDER BY not_before, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
                (_PROCESSING, node, lease_until, format_time(utcnow()), _PENDING, now),
            ).fetchone()
        return task_from_row(row) if row else None

    def renew(self, node: str, task_ids: Sequence[str], lease_until: float) -> set[str]:
        if not task_ids:
            return set()
        with self._conn() as conn:
            conn.execute(
                "UPDATE accel_tasks SET lease_until=%s WHERE node=%s AND status=%s AND id = ANY(%s)",
                (lease_until, node, _PROCESSING, list(task_ids)),
            )
            rows = conn.execute(
                "SELECT id FROM accel_tasks WHERE cancel_requested AND id = ANY(%s)", (list(task_ids),)
            ).fetchall()
        return {row["id"] for row in rows}

    def request_cancel(self, task_id: str) -> bool:
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE accel_tasks SET cancel_requested=TRUE WHERE id=%s AND status=%s",
                (task_id, _PROCESSING),
            )
        return bool(cur.rowcount == 1)

    def release(self, node: str) -> None:
        with self._conn() as conn:
            conn.execute(
                _notifying("UPDATE accel_tasks SET lease_until=0 WHERE node=%s AND status=%s RETURNING 1"),
                (node, _PROCESSING, CHANNEL),
            )

    def lock_conversion(self, task: Task) -> str | None:
        import psycopg

        with self._conn() as conn:
            try:
                # The key columns are written with the flag: the index checks the row as it is now.
                conn.execute(
                    "UPDATE accel_tasks SET converting=TRUE, source_digest=%s, driver_key=%s, target=%s "
                    "WHERE id=%s",
                    (task.source_digest, task.driver_key, task.target, task.id),
                )
                return None
            except psycopg.errors.UniqueViolation:
                row = conn.execute(
                    "SELECT id FROM accel_tasks WHERE converting AND status=%s "
                    "AND source_digest=%s AND driver_key=%s AND target=%s",
                    (_PROCESSING, task.source_digest, task.driver_key, task.target),
                ).fetchone()
        # The owner may have finished between the two statements: then try again later all the same.
        return str(row["id"]) if row else ""

    def unlock_conversion(self, task: Task) -> None:
        with self._conn() as conn:
            # One statement: the lock goes and the twins waiting for it are woken (and told) together.
            conn.execute(
                "WITH unlocked AS (UPDATE accel_tasks SET converting=FALSE WHERE id=%s), "
                "woken AS (UPDATE accel_tasks SET not_before=0 WHERE status=%s AND source_digest=%s "
                "AND driver_key=%s AND target=%s AND id<>%s RETURNING 1) "
                "SELECT pg_notify(%s, '') FROM (SELECT 1 FROM woken LIMIT 1) AS any_woken",
                (task.id, _PENDING, task.source_digest, task.driver_key, task.target, task.id, CHANNEL),
            )

    def next_wakeup(self) -> float | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT MIN(not_before) AS wake FROM accel_tasks WHERE status=%s", (_PENDING,)
            ).fetchone()
        return float(row["wake"]) if row and row["wake"] is not None else None

    def reclaim_expired(self, now: float, max_attempts: int, *, reset_waits: bool = False) -> tuple[int, int]:
        with self._conn() as conn, conn.transaction():
            failed = conn.execute(
                "UPDATE accel_tasks SET status=%s, reason=%s, finished=%s, converting=FALSE "
                "WHERE status=%s AND lease_until<%s AND attempts>=%s",
                (
                    TaskStatus.FAILED.value,
                    INTERRUPTED_TOO_OFTEN,
                    format_time(utcnow()),
                    _PROCESSING,
                    now,
                    max_attempts,
                ),
            ).rowcount
            requeued = conn.execute(
                "UPDATE accel_tasks SET status=%s, not_before=0, converting=FALSE "
                "WHERE status=%s AND lease_until<%s",
                (_PENDING, _PROCESSING, now),
            ).rowcount
            if reset_waits:
                conn.execute(
                    "UPDATE accel_tasks SET not_before=0 WHERE status=%s AND not_before>0", (_PENDING,)
                )
            if requeued:
                self._notify(conn)
        return requeued, failed

    def count(self, status: TaskStatus) -> int:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT COUNT(*) AS n FROM accel_tasks WHERE status=%s", (status.value,)
            ).fetchone()
        return int(row["n"]) if row else 0

    def summary(self, since: datetime) -> TaskSummary:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT status, COUNT(*) AS n, SUM(bytes_in) AS bytes_in, SUM(bytes_out) AS bytes_out, "
                "SUM(cache_saved) AS cache_saved FROM accel_tasks "
                "WHERE status = ANY(%s) OR (status = ANY(%s) AND finished>=%s) GROUP BY status",
                (list(ACTIVE_STATUSES), list(FINAL_STATUSES), format_time(since)),
            ).fetchall()
        return TaskSummary.from_counts(
            since,
            [
                (
                    row["status"],
                    int(row["n"]),
                    int(row["bytes_in"] or 0),
                    int(row["bytes_out"] or 0),
                    int(row["cache_saved"] or 0),
                )
                for row in rows
            ],
        )

    def purge_finished(self, before: datetime) -> int:
        with self._conn() as conn:
            cur = conn.execute(
                "DELETE FROM accel_tasks WHERE status = ANY(%s) AND finished IS NOT NULL AND finished<%s",
                (list(FINAL_STATUSES), format_time(before)),
            )
        return int(cur.rowcount)

    def ping(self) -> None:
        self.database.ping()

    def close(self) -> None:
        """The database is the caller's: it may serve the layer cache too."""
