"""A real PostgreSQL for tests: Debian's server binaries, a cluster in a temporary directory.

initdb and the server refuse to run as root, so under root they run as the ``postgres`` user the Debian
package creates (the cluster directory is handed to it). The server listens on a free loopback port only,
with password (SCRAM) authentication, and can be stopped and started again on the same port and data.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.registry import free_port

PG_BIN = Path(os.environ.get("ACCEL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "accel"


def postgres_available() -> bool:
    return (PG_BIN / "initdb").is_file() and (PG_BIN / "pg_ctl").is_file()


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@dataclass
class PostgresServer:
    root: Path
    port: int
    password: str
    fsync: bool = False
    _running: bool = field(default=False, init=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k '' -c fsync={'on' if self.fsync else 'off'}"
        options += " -c max_connections=200"
        self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.root / "server.log"), "-o", options)
        self._running = True

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when a database server goes away."""
        if self._running:
            self._pg_ctl("stop", "-m", "fast", "-w")
            self._running = False

    def create_database(self) -> str:
        """A new empty database; answers its DSN."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(*, fsync: bool = False) -> PostgresServer:
    root = Path(tempfile.mkdtemp(prefix="accel-pg-"))
    password = secrets.token_urlsafe(12)
    (root / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    subprocess.run(
        _as_server_user(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                USER,
                f"--pwfile={root / 'pw'}",
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )
    server = PostgresServer(root, free_port(), password, fsync=fsync)
    server.start()
    atexit.register(server.close)
    return server
