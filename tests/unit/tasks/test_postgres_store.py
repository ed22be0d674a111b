"""What only the PostgreSQL store does: migrations under concurrent starts, NOTIFY wake-ups, clear errors."""

from __future__ import annotations

import logging
import threading

import pytest

from accel.database import DatabaseUnavailableError, PostgresDatabase, redact_dsn
from accel.tasks import Task
from accel.tasks.postgres import MIGRATIONS, PostgresTaskStore
from tests.support.postgres import PostgresServer


def test_nodes_starting_together_migrate_once(postgres_dsn: str) -> None:
    databases = [PostgresDatabase(postgres_dsn) for _ in range(4)]
    barrier = threading.Barrier(len(databases))
    errors: list[BaseException] = []

    def start(database: PostgresDatabase) -> None:
        barrier.wait()
        try:
            PostgresTaskStore(database)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(d,)) for d in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with databases[0].connection() as conn:
        version = conn.execute("SELECT version FROM accel_schema WHERE component='tasks'").fetchone()
    assert version == (MIGRATIONS[-1].version,)
    for database in databases:
        database.close()


def test_other_nodes_are_woken_by_notify(postgres_dsn: str) -> None:
    writer_db, reader_db = PostgresDatabase(postgres_dsn), PostgresDatabase(postgres_dsn)
    writer, reader = PostgresTaskStore(writer_db), PostgresTaskStore(reader_db)
    woken = threading.Event()
    listening = threading.Event()

    def callback() -> None:
        if listening.is_set():
            woken.set()
        listening.set()  # the first call comes when the listener is connected

    reader.on_change(callback)
    assert listening.wait(10)
    writer.add(Task(source="h/a:1"))
    assert woken.wait(10), "a task added on one node wakes the others"
    writer_db.close()
    reader_db.close()


def test_unreachable_database_is_one_clear_line_without_the_password(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = postgres_server.dsn().replace(postgres_server.password, "not-the-password")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseUnavailableError) as raised:
        PostgresDatabase(wrong)
    message = raised.value.message
    assert "\n" not in message and "not-the-password" not in message
    assert "password authentication failed" in message and "accel:***@127.0.0.1" in message
    assert "not-the-password" not in caplog.text


def test_redact_dsn_hides_every_password_form() -> None:
    assert redact_dsn("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_dsn("postgresql://db/x?user=u&password=s3cret&sslmode=require") == (
        "postgresql://db/x?user=u&password=***&sslmode=require"
    )
    assert redact_dsn("postgresql://u@db/x") == "postgresql://u@db/x"
