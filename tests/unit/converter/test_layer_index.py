"""The converted-layer index contract, against both indexes: the SQLite file and the shared PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accel.converter.cache import LayerCache, LayerIndex
from accel.converter.cache_postgres import PostgresLayerCache
from accel.database import PostgresDatabase
from accel.oci.manifest import Descriptor

IndexFactory = Callable[[int], LayerIndex]


@pytest.fixture(params=["sqlite", "postgres"])
def open_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexFactory]:
    databases: list[PostgresDatabase] = []
    if request.param == "sqlite":

        def factory(capacity: int) -> LayerIndex:
            return LayerCache(tmp_path / "cache.db", capacity)

    else:
        dsn: str = request.getfixturevalue("postgres_dsn")

        def factory(capacity: int) -> LayerIndex:
            databases.append(PostgresDatabase(dsn))
            return PostgresLayerCache(databases[-1], capacity)

    yield factory
    for database in databases:
        database.close()


def _blob(n: int) -> Descriptor:
    return Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + f"{n:x}".rjust(64, "0"), n)


def test_entries_are_shared_and_locations_merge(open_index: IndexFactory) -> None:
    node_a, node_b = open_index(10), open_index(10)
    node_a.put("sha256:src", "k", _blob(1), "sha256:diff", b"\x00extra", ["reg/a"])
    entry = node_b.get("sha256:src", "k")
    assert entry is not None
    assert (entry.descriptor, entry.diff_id, entry.extra, entry.locations) == (
        _blob(1),
        "sha256:diff",
        b"\x00extra",
        ["reg/a"],
    )
    assert node_b.get("sha256:src", "other-key") is None
    node_b.add_location("sha256:src", "k", "reg/b")
    again = node_a.get("sha256:src", "k")
    assert again is not None and again.locations == ["reg/a", "reg/b"]
    node_a.discard("sha256:src", "k")
    assert node_b.get("sha256:src", "k") is None and len(node_b) == 0


def test_capacity_evicts_the_least_recently_used(open_index: IndexFactory) -> None:
    index = open_index(2)
    index.put("sha256:1", "k", _blob(1), "d1", b"", [])
    index.put("sha256:2", "k", _blob(2), "d2", b"", [])
    assert index.get("sha256:1", "k") is not None  # now the most recently used
    index.put("sha256:3", "k", _blob(3), "d3", b"", [])
    assert len(index) == 2
    assert index.get("sha256:2", "k") is None
    assert index.get("sha256:1", "k") is not None and index.get("sha256:3", "k") is not None


def test_a_one_time_conversion_whose_database_is_away_uses_the_local_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from accel.converter import Converter
    from tests.support.configs import make_config
    from tests.support.registry import free_port

    dsn = f"postgresql://accel:pw-not-shown@127.0.0.1:{free_port()}/gone"
    config = make_config(tmp_path / "work", {}, provider__database=dsn)
    with Converter(config) as converter:
        assert isinstance(converter.cache, LayerCache)
    assert "shared layer cache unavailable" in caplog.text and "pw-not-shown" not in caplog.text
