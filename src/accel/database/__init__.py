"""The shared database several acceld nodes use: PostgreSQL, reached through one connection pool.

SQLite stays the embedded default (the task store and the layer cache open their own files under
``provider.work_dir``); ``provider.database`` set to a ``postgresql://`` DSN makes both live here instead, so
nodes share one queue and one layer-cache index. psycopg is imported only when a DSN is configured.
"""

from __future__ import annotations

from accel.database.dsn import is_postgres_dsn, redact_dsn
from accel.database.postgres import DatabaseUnavailableError, Migration, PostgresDatabase

__all__ = [
    "DatabaseUnavailableError",
    "Migration",
    "PostgresDatabase",
    "is_postgres_dsn",
    "redact_dsn",
]
