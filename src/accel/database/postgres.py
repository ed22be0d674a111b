"""One PostgreSQL database shared by every acceld node: a connection pool, versioned migrations, wake-ups.

Every user of the database (the task store, the layer-cache index) goes through :class:`PostgresDatabase`:
it owns the pool, turns an unreachable server into :class:`DatabaseUnavailableError` (transient, and
without the password: errors and logs show :func:`redact_dsn`'s form), applies each component's
migrations once even when several nodes start together, and runs LISTEN loops that survive a restart of
the server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accel.database.dsn import redact_dsn
from accel.errors import AccelError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key under which migrations run: one node migrates, the others wait and find the
# work done. Any constant works; this one spells "accl".
_MIGRATION_LOCK = 0x6163636C
_CHECK_AFTER = 1.0  # seconds idle after which a pooled connection is checked before use


class DatabaseUnavailableError(AccelError):
    """The shared database cannot be reached (down, refused, timed out). Worth retrying later."""

    code = "ERR_DATABASE"
    status = 503
    transient = True


@dataclass(frozen=True)
class Migration:
    """Schema step ``version`` of one component; ``statements`` run in one transaction, in order."""

    version: int
    statements: tuple[str, ...]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class PostgresDatabase:
    """A pool of connections to ``dsn``; thread-safe. Opening fails fast, with one line, when the server
    cannot be reached, so a mistyped address is an error at start and not a hang."""

    def __init__(
        self,
        dsn: str,
        *,
        max_connections: int = 8,
        connect_timeout: float = 5.0,
        wait_timeout: float = 2.0,
        application_name: str = "acceld",
    ) -> None:
        import psycopg
        from psycopg.rows import tuple_row
        from psycopg_pool import ConnectionPool, PoolTimeout

        # Resolved once: connection() is on every query's path.
        self._tuple_row = tuple_row
        self._unreachable: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout)
        self.display = redact_dsn(dsn)
        self._dsn = dsn
        self._last_used: dict[int, float] = {}  # id(connection) -> when it last answered
        self._connect_args: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": application_name,
            "autocommit": True,
        }
        # One direct connection first: its error names the cause ("connection refused", "password
        # authentication failed"), where a pool would only time out.
        try:
            psycopg.connect(dsn, **self._connect_args).close()
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"cannot reach the database {self.display}: {_first_line(exc)}"
            ) from None
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            kwargs=self._connect_args,
            # A connection the server dropped (a restart) is replaced instead of failing the next query.
            check=self._check,
            timeout=wait_timeout,
            name="accel",
            open=False,
        )
        self._pool.open(wait=True, timeout=connect_timeout)
        self._stop = threading.Event()
        self._listeners: list[threading.Thread] = []

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        # A round trip per checkout would double the cost of every query; a connection used a moment ago
        # is alive (if the server went away since, that query fails once and the pool replaces it).
        if time.monotonic() - self._last_used.get(id(conn), 0.0) > _CHECK_AFTER:
            conn.execute("")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection yielding tuples (a user may set another ``row_factory``); use
        ``conn.transaction()`` for several statements at once."""
        try:
            with self._pool.connection() as conn:
                conn.row_factory = self._tuple_row  # as the pool made it, whatever the last user chose
                try:
                    yield conn
                finally:
                    self._last_used[id(conn)] = time.monotonic()
        except self._unreachable as exc:
            raise DatabaseUnavailableError(f"database {self.display}: {_first_line(exc)}") from None

    def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Bring ``component``'s tables to the newest of ``migrations``; answers the version now in place.

        Serialised by an advisory lock held for the transaction, so nodes starting together neither race
        on ``CREATE TABLE`` nor apply a step twice; a failed step rolls back whole.
        """
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS accel_schema "
                "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            row = conn.execute("SELECT version FROM accel_schema WHERE component=%s", (component,)).fetchone()
            current = int(row[0]) if row else 0
            for migration in sorted(migrations, key=lambda m: m.version):
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    conn.execute(statement.encode())
                current = migration.version
                log.info("database migrated", extra={"component": component, "version": current})
            conn.execute(
                "INSERT INTO accel_schema (component, version) VALUES (%s, %s) "
                "ON CONFLICT (component) DO UPDATE SET version=EXCLUDED.version",
                (component, current),
            )
        return current

    def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` on every NOTIFY on ``channel``, from a thread of its own, until :meth:`close`.

        Also called after a lost connection comes back: notifications sent meanwhile are gone, so the
        listener must look for work itself.
        """
        thread = threading.Thread(
            target=self._listen, args=(channel, callback), name=f"accel-listen-{channel}", daemon=True
        )
        thread.start()
        self._listeners.append(thread)

    def _listen(self, channel: str, callback: Callable[[], None]) -> None:
        import psycopg
        from psycopg import sql

        delay = 0.2
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, **self._connect_args) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    delay = 0.2
                    callback()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            callback()
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                log.warning("database listener lost its connection", extra={"error": _first_line(exc)})
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def ping(self) -> None:
        with self.connection() as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        self._stop.set()
        for thread in self._listeners:
            thread.join(2.0)
        self._pool.close()
