"""Task persistence: the interface the engine talks to, the row mapping, and the embedded SQLite store.

:class:`SQLiteTaskStore` serves one node (several processes may share its file); the PostgreSQL store in
:mod:`accel.tasks.postgres` serves many. Both claim with a compare-and-set under a lease and take the twin
lock through a unique partial index, so the engine has one code path for either.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from accel.tasks.model import Task, TaskStatus, TaskSummary, format_time, parse_time, utcnow

ACTIVE_STATUSES = (TaskStatus.PENDING.value, TaskStatus.PROCESSING.value)
FINAL_STATUSES = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value, TaskStatus.CANCELED.value)

COLUMNS = (
    "id",
    "created",
    "started",
    "finished",
    "source",
    "target",
    "source_digest",
    "target_digest",
    "driver",
    "driver_key",
    "source_size",
    "target_size",
    "status",
    "reason",
    "attempts",
    "not_before",
    "cache_hits",
    "cache_misses",
    "cache_saved",
    "bytes_in",
    "bytes_out",
    "timings",
    "node",
)

_ADDED_COLUMNS = {
    "cache_hits": "INTEGER NOT NULL DEFAULT 0",
    "cache_misses": "INTEGER NOT NULL DEFAULT 0",
    "cache_saved": "INTEGER NOT NULL DEFAULT 0",
    "bytes_in": "INTEGER NOT NULL DEFAULT 0",
    "bytes_out": "INTEGER NOT NULL DEFAULT 0",
    "timings": "TEXT NOT NULL DEFAULT '{}'",
    "node": "TEXT NOT NULL DEFAULT ''",
    "lease_until": "REAL NOT NULL DEFAULT 0",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "converting": "INTEGER NOT NULL DEFAULT 0",
}
INTERRUPTED_TOO_OFTEN = "interrupted too many times (the service stopped during every attempt)"
_INSERT = f"INSERT INTO tasks ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
_UPDATE = f"UPDATE tasks SET {','.join(f'{c}=?' for c in COLUMNS[1:])} WHERE id=?"
_UPDATE_IF = _UPDATE + " AND status=?"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
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
    source_size INTEGER NOT NULL DEFAULT 0,
    target_size INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0,
    cache_misses INTEGER NOT NULL DEFAULT 0,
    cache_saved INTEGER NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    timings TEXT NOT NULL DEFAULT '{}',
    node TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    converting INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, not_before);
CREATE INDEX IF NOT EXISTS tasks_source ON tasks (source, driver_key, status);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created);
"""
# After the added columns: older files get ``converting`` from _ADDED_COLUMNS first.
_TWIN_LOCK = (
    "CREATE UNIQUE INDEX IF NOT EXISTS tasks_converting ON tasks (source_digest, driver_key, target) "
    "WHERE converting=1 AND status='PROCESSING'"
)


class TaskStore(Protocol):
    """What the engine needs from a task database."""

    def add(self, task: Task) -> None: ...
    def add_many(self, tasks: list[Task]) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...
    def delete(self, task_ids: Sequence[str]) -> None: ...
    def save(self, task: Task) -> None: ...
    def save_if(self, task: Task, expected: TaskStatus) -> bool: ...
    def get(self, task_id: str) -> Task | None: ...
    def list_tasks(self, *, limit: int = 1000, status: TaskStatus | None = None) -> list[Task]: ...
    def find_active(self, source: str, driver_key: str) -> list[Task]: ...
    def find_active_many(self, sources: Sequence[str], driver_key: str) -> dict[str, list[Task]]: ...
    def claim_next(self, now: float, node: str, lease_until: float) -> Task | None:
        """Claim the first runnable PENDING task for ``node`` under a lease, and start its attempt in the
        same write (attempts + 1, ``started`` set once, ``reason`` cleared)."""
        ...

    def renew(self, node: str, task_ids: Sequence[str], lease_until: float) -> set[str]: ...
    def request_cancel(self, task_id: str) -> bool: ...
    def release(self, node: str) -> None: ...
    def lock_conversion(self, task: Task) -> str | None: ...
    def unlock_conversion(self, task: Task) -> None: ...
    def on_change(self, callback: Callable[[], None]) -> None: ...
    def next_wakeup(self) -> float | None: ...
    def reclaim_expired(
        self, now: float, max_attempts: int, *, reset_waits: bool = False
    ) -> tuple[int, int]: ...
    def count(self, status: TaskStatus) -> int: ...
    def summary(self, since: datetime) -> TaskSummary: ...
    def purge_finished(self, before: datetime) -> int: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


def task_to_row(task: Task) -> tuple[Any, ...]:
    return (
        task.id,
        format_time(task.created),
        format_time(task.started),
        format_time(task.finished),
        task.source,
        task.target,
        task.source_digest,
        task.target_digest,
        task.driver,
        task.driver_key,
        task.source_size,
        task.target_size,
        task.status.value,
        task.reason,
        task.attempts,
        task.not_before,
        task.cache_hits,
        task.cache_misses,
        task.cache_saved,
        task.bytes_in,
        task.bytes_out,
        json.dumps(task.timings),
        task.node,
    )


def task_from_row(row: sqlite3.Row) -> Task:
    created = parse_time(row["created"])
    assert created is not None
    return Task(
        id=row["id"],
        created=created,
        started=parse_time(row["started"]),
        finished=parse_time(row["finished"]),
        source=row["source"],
        target=row["target"],
        source_digest=row["source_digest"],
        target_digest=row["target_digest"],
        driver=row["driver"],
        driver_key=row["driver_key"],
        source_size=row["source_size"],
        target_size=row["target_size"],
        status=TaskStatus(row["status"]),
        reason=row["reason"],
        attempts=row["attempts"],
        not_before=row["not_before"],
        cache_hits=row["cache_hits"],
        cache_misses=row["cache_misses"],
        cache_saved=row["cache_saved"],
        bytes_in=row["bytes_in"],
        bytes_out=row["bytes_out"],
        timings=json.loads(row["timings"]),
        node=row["node"],
    )


class SQLiteTaskStore:
    """Tasks in one SQLite file, in WAL mode.

    New tasks are committed with ``synchronous=FULL`` (fsync before the webhook gets its 200, so an accepted
    push survives even a power loss); status updates use NORMAL, which survives a process crash and costs no
    fsync — losing one to a power cut only makes a task run again, and the idempotence check ends it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Reentrant: add_many and delete run inside transaction() on the same thread.
        self._lock = threading.RLock()
        self._create_private()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        self._db.execute(_TWIN_LOCK)
        # Reads go through their own connection: in WAL mode it sees only committed rows and is not held
        # up by a write transaction, so webhooks can look for duplicates while a group commit is slow.
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._reader.row_factory = sqlite3.Row

    def _create_private(self) -> None:
        """The database (and its -wal/-shm files) are 0600 like the rest of work_dir: task sources and
        reasons name private repositories. SQLite gives its side files the main file's mode."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for side in ("-wal", "-shm"):
            extra = self.path.with_name(self.path.name + side)
            if extra.exists():
                extra.chmod(0o600)

    def _add_missing_columns(self) -> None:
        # Databases made by an earlier version lack the newer columns; every one has a default.
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(tasks)")}
        for column, decl in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {decl}")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def add(self, task: Task) -> None:
        self.add_many([task])

    def add_many(self, tasks: list[Task]) -> None:
        """Insert in one transaction with one fsync (the engine batches concurrent webhooks this way).

        Inside :meth:`transaction` the rows become durable only when that transaction commits.
        """
        with self.transaction():
            self._db.executemany(_INSERT, [task_to_row(t) for t in tasks])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One durable (fsync'ed) write transaction; nested use joins the outer one.

        Commits when the block ends, rolls back when it raises. The store is locked for the duration.
        """
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def delete(self, task_ids: Sequence[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM tasks WHERE id=?", [(i,) for i in task_ids])

    def save(self, task: Task) -> None:
        row = task_to_row(task)
        with self._lock:
            self._db.execute(_UPDATE, (*row[1:], row[0]))

    def save_if(self, task: Task, expected: TaskStatus) -> bool:
        """Save only if the stored status is still ``expected`` (a worker may have claimed it meanwhile)."""
        row = task_to_row(task)
        with self._lock:
            cur = self._db.execute(_UPDATE_IF, (*row[1:], row[0], expected.value))
            return cur.rowcount == 1

    def get(self, task_id: str) -> Task | None:
        rows = self._query("SELECT * FROM tasks WHERE id=?", (task_id,))
        return task_from_row(rows[0]) if rows else None

    def list_tasks(self, *, limit: int = 1000, status: TaskStatus | None = None) -> list[Task]:
        if status is None:
            rows = self._query("SELECT * FROM tasks ORDER BY created DESC, rowid DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
                "SELECT * FROM tasks WHERE status=? ORDER BY created DESC, rowid DESC LIMIT ?",
                (status.value, limit),
            )
        return [task_from_row(r) for r in rows]

    def find_active(self, source: str, driver_key: str) -> list[Task]:
        return self.find_active_many([source], driver_key).get(source, [])

    def find_active_many(self, sources: Sequence[str], driver_key: str) -> dict[str, list[Task]]:
        """:meth:`find_active` for many sources with one query per 500 (a large webhook's resources)."""
        found: dict[str, list[Task]] = {}
        unique = list(dict.fromkeys(sources))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self._query(
                f"SELECT * FROM tasks WHERE source IN ({','.join('?' * len(chunk))}) AND driver_key=? "
                "AND status IN (?,?) ORDER BY rowid",
                (*chunk, driver_key, *ACTIVE_STATUSES),
            )
            for row in rows:
                found.setdefault(row["source"], []).append(task_from_row(row))
        return found

    def claim_next(self, now: float, node: str, lease_until: float) -> Task | None:
        with self._lock:
            while True:
                row = self._db.execute(
                    "SELECT * FROM tasks WHERE status=? AND not_before<=? ORDER BY not_before, rowid LIMIT 1",
                    (TaskStatus.PENDING.value, now),
                ).fetchone()
                if row is None:
                    return None
                # Compare-and-set: another instance sharing the database may have claimed it meanwhile.
                started = format_time(utcnow())
                cur = self._db.execute(
                    "UPDATE tasks SET status=?, node=?, lease_until=?, cancel_requested=0, converting=0, "
                    "attempts=attempts+1, started=COALESCE(started, ?), reason='' WHERE id=? AND status=?",
                    (
                        TaskStatus.PROCESSING.value,
                        node,
                        lease_until,
                        started,
                        row["id"],
                        TaskStatus.PENDING.value,
                    ),
                )
                if cur.rowcount == 1:
                    task = task_from_row(row)
                    task.status, task.node, task.reason = TaskStatus.PROCESSING, node, ""
                    task.attempts += 1
                    task.started = task.started or parse_time(started)
                    return task

    def renew(self, node: str, task_ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend ``node``'s leases on ``task_ids``; answers those of them someone asked to cancel."""
        if not task_ids:
            return set()
        marks = ",".join("?" * len(task_ids))
        with self._lock:
            self._db.execute(
                f"UPDATE tasks SET lease_until=? WHERE node=? AND status=? AND id IN ({marks})",
                (lease_until, node, TaskStatus.PROCESSING.value, *task_ids),
            )
            rows = self._db.execute(
                f"SELECT id FROM tasks WHERE cancel_requested=1 AND id IN ({marks})", tuple(task_ids)
            ).fetchall()
        return {row[0] for row in rows}

    def request_cancel(self, task_id: str) -> bool:
        """Ask whichever node runs ``task_id`` to stop it (it reads this at its next heartbeat)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE tasks SET cancel_requested=1 WHERE id=? AND status=?",
                (task_id, TaskStatus.PROCESSING.value),
            )
        return cur.rowcount == 1

    def release(self, node: str) -> None:
        """``node`` stops: its running tasks may be taken back at once, not a lease later."""
        with self._lock:
            self._db.execute(
                "UPDATE tasks SET lease_until=0 WHERE node=? AND status=?",
                (node, TaskStatus.PROCESSING.value),
            )

    def lock_conversion(self, task: Task) -> str | None:
        """Take the twin lock on (source digest, driver key, target) for ``task``: None when taken, else
        the id of the task holding it ("" when that one let go meanwhile; try again later all the same)."""
        with self._lock:
            try:
                # The key columns are written with the flag: the index checks the row as it is now.
                self._db.execute(
                    "UPDATE tasks SET converting=1, source_digest=?, driver_key=?, target=? WHERE id=?",
                    (task.source_digest, task.driver_key, task.target, task.id),
                )
                return None
            except sqlite3.IntegrityError:
                row = self._db.execute(
                    "SELECT id FROM tasks WHERE converting=1 AND status=? "
                    "AND source_digest=? AND driver_key=? AND target=?",
                    (TaskStatus.PROCESSING.value, task.source_digest, task.driver_key, task.target),
                ).fetchone()
        return str(row[0]) if row else ""

    def unlock_conversion(self, task: Task) -> None:
        """Let go of the twin lock; the twins waiting for it become runnable at once."""
        with self.transaction():
            self._db.execute("UPDATE tasks SET converting=0 WHERE id=?", (task.id,))
            self._db.execute(
                "UPDATE tasks SET not_before=0 WHERE status=? AND source_digest=? AND driver_key=? "
                "AND target=? AND id<>?",
                (TaskStatus.PENDING.value, task.source_digest, task.driver_key, task.target, task.id),
            )

    def on_change(self, callback: Callable[[], None]) -> None:
        """SQLite has no notifications: nodes sharing a file find each other's work by polling."""

    def next_wakeup(self) -> float | None:
        rows = self._query("SELECT MIN(not_before) FROM tasks WHERE status=?", (TaskStatus.PENDING.value,))
        value = rows[0][0]
        return float(value) if value is not None else None

    def reclaim_expired(self, now: float, max_attempts: int, *, reset_waits: bool = False) -> tuple[int, int]:
        """PROCESSING tasks whose node's lease ran out (the node died or stopped) go back to PENDING, or
        FAIL when they used up their attempts; live nodes' tasks are left alone. Returns (requeued, failed).

        ``reset_waits`` (at a node's start): every PENDING task becomes runnable at once, since backoff
        deadlines and twin waits were kept in the memory of a node that may be gone.
        """
        with self._lock:
            failed = self._db.execute(
                "UPDATE tasks SET status=?, reason=?, finished=?, converting=0 "
                "WHERE status=? AND lease_until<? AND attempts>=?",
                (
                    TaskStatus.FAILED.value,
                    INTERRUPTED_TOO_OFTEN,
                    format_time(utcnow()),
                    TaskStatus.PROCESSING.value,
                    now,
                    max_attempts,
                ),
            ).rowcount
            requeued = self._db.execute(
                "UPDATE tasks SET status=?, not_before=0, converting=0 WHERE status=? AND lease_until<?",
                (TaskStatus.PENDING.value, TaskStatus.PROCESSING.value, now),
            ).rowcount
            if reset_waits:
                self._db.execute("UPDATE tasks SET not_before=0 WHERE status=?", (TaskStatus.PENDING.value,))
        return requeued, failed

    def count(self, status: TaskStatus) -> int:
        return int(self._query("SELECT COUNT(*) FROM tasks WHERE status=?", (status.value,))[0][0])

    def summary(self, since: datetime) -> TaskSummary:
        rows = self._query(
            "SELECT status, COUNT(*), SUM(bytes_in), SUM(bytes_out), SUM(cache_saved) FROM tasks "
            "WHERE status IN (?,?) OR (status IN (?,?,?) AND finished>=?) GROUP BY status",
            (*ACTIVE_STATUSES, *FINAL_STATUSES, format_time(since)),
        )
        return TaskSummary.from_counts(
            since, [(r[0], int(r[1]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0)) for r in rows]
        )

    def purge_finished(self, before: datetime) -> int:
        with self._lock:
            return self._db.execute(
                "DELETE FROM tasks WHERE status IN (?,?,?) AND finished IS NOT NULL AND finished<?",
                (*FINAL_STATUSES, format_time(before)),
            ).rowcount

    def ping(self) -> None:
        self._query("SELECT 1")

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()
