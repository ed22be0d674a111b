"""acceld: the conversion daemon (``acceld --config <yaml>``).

Listens on ``server.host:server.port`` or on the unix socket ``server.uds``; keeps its tasks in
``<provider.work_dir>/tasks.db``, or in the PostgreSQL ``provider.database`` names, shared with other
nodes. SIGTERM and SIGINT stop it gracefully: no new requests, running conversions get
``--shutdown-grace`` seconds to finish, the rest stay PENDING for the next start (on any node).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, cast

import uvicorn

from accel import __version__
from accel.cli.logs import demote_http_client_logs
from accel.config import Config, load_config
from accel.database import PostgresDatabase
from accel.errors import AccelError
from accel.metrics import Metrics
from accel.server import create_app, setup_logging
from accel.tasks import ConverterLike, SQLiteTaskStore, TaskEngine, TaskStore

log = logging.getLogger("accel.acceld")

# Lets a different converter be plugged in ("module:callable", called with the Config); tests use it to run
# the real daemon against a scripted converter.
CONVERTER_FACTORY_ENV = "ACCELD_CONVERTER_FACTORY"


def _version() -> str:
    return __version__


def _make_converter(config: Config, database: PostgresDatabase | None) -> Any:
    spec = os.environ.get(CONVERTER_FACTORY_ENV, "")
    if spec:
        module_name, _, attr = spec.partition(":")
        factory = cast(Callable[[Config], Any], getattr(importlib.import_module(module_name), attr))
        return factory(config)
    from accel.converter import Converter

    return Converter(config, database=database)


def _open_database(config: Config) -> PostgresDatabase | None:
    if not config.provider.database:
        return None
    # Each worker holds a connection for its saves; the API, heartbeat and the layer cache share the rest.
    database = PostgresDatabase(config.provider.database, max_connections=config.converter.worker + 8)
    log.info("shared database", extra={"database": database.display})
    return database


def _open_store(config: Config, database: PostgresDatabase | None) -> TaskStore:
    if database is None:
        return SQLiteTaskStore(config.provider.work_dir / "tasks.db")
    from accel.tasks.postgres import PostgresTaskStore

    return PostgresTaskStore(database)


class _Server(uvicorn.Server):
    """uvicorn re-raises the stop signal after shutting down (exit status -15); we exit 0 after a clean stop.

    A second SIGTERM or SIGINT skips waiting for open connections.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def _bind_unix(path: str) -> socket.socket:
    """Bind the unix socket ourselves so that it is created 0600 (uvicorn would make it 0666)."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not stat.S_ISSOCK(target.lstat().st_mode):
            raise AccelError(f"server.uds: {path} exists and is not a socket")
        target.unlink()  # a stale socket from a previous run
    target.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    return sock


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="acceld", description="Image acceleration conversion daemon.")
    parser.add_argument("--config", required=True, help="path of the YAML configuration")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=None,
        help="seconds running conversions get to finish on SIGTERM/SIGINT (default: server.shutdown_grace)",
    )
    parser.add_argument("--version", action="version", version=f"acceld {_version()}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    setup_logging(args.log_level)
    demote_http_client_logs()
    try:
        config = load_config(args.config)
    except AccelError as exc:
        log.error("cannot load config", extra={"error": exc.message})
        return 2
    log.info("starting acceld", extra={"version": _version(), "config": args.config})
    work_dir = config.provider.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        database = _open_database(config)
    except AccelError as exc:
        log.error("cannot start", extra={"error": exc.message})
        return 1
    try:
        store = _open_store(config, database)
        converter = _make_converter(config, database)
    except AccelError as exc:
        log.error("cannot initialise the converter", extra={"error": exc.message})
        if database is not None:
            database.close()
        return 1
    metrics = Metrics(config.server.name)
    retention = timedelta(seconds=config.server.task_retention)
    engine = TaskEngine(
        store,
        cast(ConverterLike, converter),
        workers=config.converter.worker,
        metrics=metrics,
        retention=retention,
        node=config.server.node,
        lease=config.server.task_lease,
    )
    grace = config.server.shutdown_grace if args.shutdown_grace is None else args.shutdown_grace
    app = create_app(config, engine, metrics, shutdown_grace=grace)
    sock: socket.socket | None = None
    try:
        if config.server.uds:
            sock = _bind_unix(config.server.uds)
            uv_config = uvicorn.Config(app, fd=sock.fileno(), log_config=None, timeout_graceful_shutdown=5)
            where = f"unix:{config.server.uds}"
        else:
            uv_config = uvicorn.Config(
                app,
                host=config.server.host,
                port=config.server.port,
                log_config=None,
                timeout_graceful_shutdown=5,
            )
            where = f"{config.server.host}:{config.server.port}"
        log.info("listening", extra={"address": where, "workers": config.converter.worker})
        server = _Server(uv_config)
        server.run()
        return 0 if server.started else 1
    finally:
        store.close()
        close = getattr(converter, "close", None)
        if callable(close):
            close()
        if database is not None:
            database.close()
        if sock is not None:
            sock.close()
            Path(config.server.uds).unlink(missing_ok=True)
        log.info("acceld stopped")


if __name__ == "__main__":
    sys.exit(main())
