"""Shared pytest fixtures. Each block is owned by one area; keep additions grouped and documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.postgres import PostgresServer, postgres_available, start_postgres
from tests.support.registry import MODES, RegistryServer, registry_available, start_registry

# ------------------------------------------------------------------------ registries (registry area)
# Session-scoped docker-registry 2.8 instances: `registry_plain` (no auth, HTTP), `registry_tls` (htpasswd
# Basic over HTTPS, own CA), `registry_token` (Bearer tokens from a test token server); `registry` runs a
# test once per mode. `fault_proxy` is a fresh FaultProxy in front of `registry_plain`;
# `restartable_registry` is a private plain registry a test may stop() and start() (same port and storage).


def _start(mode: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if not registry_available():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    server = start_registry(mode, tmp_path_factory.mktemp(f"registry-{mode}"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def registry_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from _start("plain", tmp_path_factory)


@pytest.fixture(scope="session")
def registry_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from _start("tls", tmp_path_factory)


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from _start("token", tmp_path_factory)


@pytest.fixture(params=MODES)
def registry(request: pytest.FixtureRequest) -> RegistryServer:
    server: RegistryServer = request.getfixturevalue(f"registry_{request.param}")
    return server


@pytest.fixture
def fault_proxy(registry_plain: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry_plain.host) as proxy:
        yield proxy


@pytest.fixture
def restartable_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    if not registry_available():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    server = start_registry("plain", tmp_path / "restartable-registry")
    try:
        yield server
    finally:
        server.close()


# ------------------------------------------------------------------------ PostgreSQL (tasks area)
# `postgres_server`: one PostgreSQL 15 cluster for the session (tests/support/postgres.py);
# `postgres_dsn`: a fresh empty database on it per test. `restartable_postgres`: a private cluster a test
# may stop() and start() again (same port and data).


def _postgres() -> Iterator[PostgresServer]:
    if not postgres_available():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = start_postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    yield from _postgres()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture
def restartable_postgres() -> Iterator[PostgresServer]:
    yield from _postgres()
