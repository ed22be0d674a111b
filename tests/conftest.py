"""Shared pytest fixtures. Each block is owned by one area; keep additions grouped and documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
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
