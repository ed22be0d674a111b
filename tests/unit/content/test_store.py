from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from accel.content import ContentStore
from accel.errors import ContentError, DigestMismatchError
from accel.oci.digest import of_bytes

SRC = str(Path(__file__).resolve().parents[3] / "src")


def _store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def _ingest_files(store: ContentStore) -> list[Path]:
    return list((store.root / "ingest").iterdir())


def _wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- basic reads and writes ----------------------------------------------------------------------------


def test_write_and_read(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = b"some content"
    digest = store.write_bytes(data)
    assert digest == of_bytes(data)
    assert store.has(digest)
    assert store.size(digest) == len(data)
    assert store.path(digest) == store.root / "blobs" / "sha256" / digest.split(":")[1]
    assert store.read_bytes(digest) == data
    with store.open(digest) as f:
        assert f.read() == data
    assert list(store.digests()) == [digest]
    assert store.total_size() == len(data)
    assert ContentStore.for_work_dir(tmp_path).root == store.root
    missing = of_bytes(b"missing")
    assert not store.has(missing)
    for call in (store.size, store.path, store.open, store.read_bytes):
        with pytest.raises(ContentError, match="not in the content store"):
            call(missing)


def test_writer_streams_and_verifies(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(3_000_000)
    with store.writer(of_bytes(data), len(data)) as w:
        for i in range(0, len(data), 65536):
            w.write(data[i : i + 65536])
        assert w.tell() == len(data)
        assert not store.has(of_bytes(data))  # nothing is visible before commit
        assert len(_ingest_files(store)) == 1
        assert w.commit() == (of_bytes(data), len(data))
    assert store.read_bytes(of_bytes(data)) == data
    assert _ingest_files(store) == []
    digest, size = store.ingest(io.BytesIO(b"streamed"))
    assert (digest, size) == (of_bytes(b"streamed"), 8)


def test_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    expected = of_bytes(b"expected")
    with pytest.raises(DigestMismatchError, match="digest mismatch"), store.writer(expected) as w:
        w.write(b"tampered")
        w.commit()
    assert not store.has(expected)
    assert not store.has(of_bytes(b"tampered"))
    assert _ingest_files(store) == []
    with pytest.raises(DigestMismatchError, match="size mismatch"):
        store.ingest(io.BytesIO(b"abc"), of_bytes(b"abc"), 4)
    assert not store.has(of_bytes(b"abc"))
    with pytest.raises(DigestMismatchError):
        store.write_bytes(b"abc", of_bytes(b"abd"))
    assert store.total_size() == 0


def test_abandoned_writer_is_removed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.writer() as w:
        w.write(b"never committed")
        assert len(_ingest_files(store)) == 1
    assert _ingest_files(store) == []
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"failed download")
        raise RuntimeError("network dropped")
    assert _ingest_files(store) == []
    assert store.total_size() == 0
    with pytest.raises(ContentError, match="closed"):
        w.write(b"more")


def test_writer_reports_its_end_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ends: list[tuple[str, int] | None] = []
    with store.writer() as w:
        w.on_end(ends.append)
        w.write(b"kept")
        w.commit()
    with store.writer() as w:
        w.on_end(ends.append)
        w.write(b"dropped")
    with pytest.raises(DigestMismatchError), store.writer(of_bytes(b"other")) as w:
        w.on_end(ends.append)
        w.write(b"wrong")
        w.commit()
    assert ends == [(of_bytes(b"kept"), 4), None, None]


def test_writer_restart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.writer(of_bytes(b"second try")) as w:
        w.write(b"first try, interrupted")
        assert w.seekable()
        assert w.seek(0) == 0
        w.truncate()
        assert w.tell() == 0
        w.write(b"second try")
        assert w.commit() == (of_bytes(b"second try"), 10)
    assert store.read_bytes(of_bytes(b"second try")) == b"second try"
    with store.writer() as w, pytest.raises(ContentError):
        w.seek(5)


def test_commit_of_existing_blob(tmp_path: Path) -> None:
    store = _store(tmp_path)
    digest = store.write_bytes(b"same")
    before = store.path(digest).stat().st_ino
    assert store.write_bytes(b"same") == digest
    assert store.path(digest).stat().st_ino == before  # the existing blob was kept, the temp discarded
    assert _ingest_files(store) == []


def test_read_bytes_detects_corruption(tmp_path: Path) -> None:
    store = _store(tmp_path)
    digest = store.write_bytes(b"good")
    store.path(digest).write_bytes(b"bad!")
    with pytest.raises(DigestMismatchError):
        store.read_bytes(digest)
    assert store.delete(digest)
    assert not store.has(digest)
    assert not store.delete(digest)


# --- fetch locks ---------------------------------------------------------------------------------------


def test_fetch_lock_two_threads_one_download(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(100_000)
    digest = of_bytes(data)
    downloads: list[str] = []
    attempting = {name: threading.Event() for name in ("a", "b")}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def fetch(name: str) -> None:
        try:
            other = "b" if name == "a" else "a"
            barrier.wait()
            attempting[name].set()
            with store.fetch_lock(digest):
                if not store.has(digest):
                    downloads.append(name)
                    # Keep the lock until the other thread is trying to take it.
                    assert attempting[other].wait(20)
                    store.write_bytes(data, digest)
            assert store.read_bytes(digest) == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(downloads) == 1
    assert list((store.root / "locks").iterdir()) == []


_FETCHER = """
import os, sys, time
from pathlib import Path
from accel.content import ContentStore

root, name, other, digest = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
store = ContentStore(root / "content")
marks = root / "marks"

def wait(path):
    deadline = time.monotonic() + 20
    while not path.exists():
        if time.monotonic() > deadline:
            sys.exit(f"{name}: timed out waiting for {path.name}")
        time.sleep(0.005)

(marks / f"ready-{name}").touch()
wait(marks / f"ready-{other}")
(marks / f"attempt-{name}").touch()
with store.fetch_lock(digest):
    if not store.has(digest):
        with open(root / "downloads", "a") as f:
            f.write(name + "\\n")
        wait(marks / f"attempt-{other}")
        store.write_bytes(b"shared blob" * 1000, digest)
assert store.read_bytes(digest) == b"shared blob" * 1000
"""


def test_fetch_lock_two_processes_one_download(tmp_path: Path) -> None:
    (tmp_path / "marks").mkdir()
    ContentStore(tmp_path / "content")
    digest = of_bytes(b"shared blob" * 1000)
    procs = [_python(_FETCHER, str(tmp_path), n, o, digest) for n, o in (("p1", "p2"), ("p2", "p1"))]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert len((tmp_path / "downloads").read_text().split()) == 1
    assert list((tmp_path / "content" / "locks").iterdir()) == []


# --- leases and GC -------------------------------------------------------------------------------------


def test_gc_spares_leased_blobs(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a, b, c = (store.write_bytes(x * 100) for x in (b"a", b"b", b"c"))
    with store.lease("conversion") as lease:
        lease.add(b)
        assert store.leased() == {b}
        result = store.gc(0)
        assert sorted(result.removed) == sorted([a, c])
        assert (result.freed, result.total_after) == (200, 100)
        assert store.has(b) and not store.has(a) and not store.has(c)
    assert store.leased() == set()
    assert store.gc(0).removed == [b]
    assert store.total_size() == 0
    assert list((store.root / "leases").iterdir()) == []


def test_lease_protects_a_blob_before_it_exists(tmp_path: Path) -> None:
    store = _store(tmp_path)
    future = of_bytes(b"fetched later")
    with store.lease() as lease:
        lease.add(future)
        store.write_bytes(b"fetched later", future)
        assert store.gc(0).removed == []
        assert store.has(future)
    with pytest.raises(ContentError, match="released"):
        lease.add(future)


def test_writer_commit_with_lease(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.lease("w") as lease:
        with store.writer(lease=lease) as w:
            w.write(b"converted layer")
            digest, _ = w.commit()
        assert lease.digests == {digest}
        other = store.write_bytes(b"other", lease=lease)
        assert store.gc(0).removed == []
        assert lease.digests == {digest, other}


_LEASE_HOLDER = """
import os, sys
from pathlib import Path
from accel.content import ContentStore

store = ContentStore(Path(sys.argv[1]))
lease = store.lease("other-process")
lease.add(sys.argv[2])
print("leased", flush=True)
if sys.argv[3] == "die":
    os._exit(0)  # dies without releasing
sys.stdin.readline()
lease.release()
"""


def test_lease_of_live_process_holds_and_of_dead_process_expires(tmp_path: Path) -> None:
    store = _store(tmp_path)
    kept = store.write_bytes(b"kept by a live process")
    orphan = store.write_bytes(b"leased by a dead process")
    live = _python(_LEASE_HOLDER, str(store.root), kept, "live")
    dead = _python(_LEASE_HOLDER, str(store.root), orphan, "die")
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "leased"
        dead.communicate(timeout=30)
        assert dead.returncode == 0
        assert len(list((store.root / "leases").iterdir())) == 2
        assert store.leased() == {kept}
        result = store.gc(0)
        assert result.removed == [orphan]
        assert store.has(kept)
        assert len(list((store.root / "leases").iterdir())) == 1  # the stale lease file is gone
    finally:
        live.communicate("\n", timeout=30)
    assert live.returncode == 0
    assert store.gc(0).removed == [kept]


def test_gc_lru_order(tmp_path: Path) -> None:
    store = _store(tmp_path)
    blobs = [store.write_bytes(bytes([i]) * 100) for i in range(5)]
    with store.open(blobs[0]):  # 0 becomes the most recently used
        pass
    store.path(blobs[2])  # then 2
    result = store.gc(250)
    assert result.removed == [blobs[1], blobs[3], blobs[4]]
    assert (result.freed, result.total_after) == (300, 200)
    assert store.gc(150).removed == [blobs[0]]
    assert store.gc(150).removed == []  # already under the threshold
    assert store.read_bytes(blobs[2]) == bytes([2]) * 100


def test_gc_removes_orphaned_temp_files_only(tmp_path: Path) -> None:
    store = _store(tmp_path)
    orphan = store.root / "ingest" / "w-crashed"
    orphan.write_bytes(b"half a download")
    with store.writer() as w:
        w.write(b"in progress")
        store.gc(0)
        assert not orphan.exists()
        assert len(_ingest_files(store)) == 1  # the live writer's file stays
        digest, _ = w.commit()
    assert store.read_bytes(digest) == b"in progress"


def test_gc_racing_with_leases_never_loses_a_leased_blob(tmp_path: Path) -> None:
    store = _store(tmp_path)
    stop = threading.Event()
    failures: list[str] = []

    def collector() -> None:
        while not stop.is_set():
            store.gc(0)

    def converter(n: int) -> None:
        for i in range(60):
            data = f"blob {n} {i % 7}".encode()
            digest = of_bytes(data)
            with store.lease(f"c{n}") as lease:
                lease.add(digest)
                with store.fetch_lock(digest):
                    if not store.has(digest):
                        store.write_bytes(data, digest)
                try:
                    if store.read_bytes(digest) != data:
                        failures.append(digest)
                except ContentError:
                    failures.append(digest)

    gc_thread = threading.Thread(target=collector)
    gc_thread.start()
    workers = [threading.Thread(target=converter, args=(n,)) for n in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    gc_thread.join(60)
    assert failures == []
    store.gc(0)
    assert store.total_size() == 0
