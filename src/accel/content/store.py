"""A content-addressed blob store shared by threads and processes (the CLI and the daemon share a work_dir).

Layout under ``root`` (normally ``<provider.work_dir>/content``)::

    blobs/<alg>/<hex>        committed blobs; the file mtime is the blob's last use (LRU)
    ingest/<random>          blobs being written; each is flock'ed by its writer while open
    locks/<alg>-<hex>.lock   per-digest fetch locks (removed on release)
    leases/<id>.lease        one file per lease: a JSON header line, then one digest per line
    gc.lock                  GC holds it exclusively; lease changes and commits hold it shared

Why lease files with flock rather than SQLite or pid files: the owner holds an exclusive ``flock`` on its
lease file for the lease's lifetime, and the kernel drops that lock when the process dies, so GC can tell a
live lease from a stale one exactly (no pid-reuse guesswork, no clock) and delete the stale file. Files need
no schema or migration and nothing to repair after a crash. The pid in the header is for humans only.

Races avoided (upstream #174/#175 deleted blobs in use):

* GC decides and deletes while holding ``gc.lock`` exclusively; ``Lease.add`` and a commit with a lease
  hold it shared, so once ``add`` returns, GC cannot remove the digest. The safe pattern for a conversion
  is: ``lease.add(d)`` first, then ``has(d)`` / fetch, then use.
* A fetch lock (threading lock plus ``flock`` on a per-digest lock file) makes concurrent fetchers of one
  blob wait for the first and then find it with ``has``. The lock file is unlinked while still locked; a
  waiter that then locks the unlinked inode notices (the path no longer names its inode) and retries.
* New temporary and lease files are created and locked under the shared ``gc.lock``, so GC never sees one
  that is created but not yet locked (and mistakes it for an orphan).

Last use is recorded by setting the blob's mtime explicitly (``os.utime`` with nanoseconds) on ``open``,
``path``, ``read_bytes`` and commit, independent of the ``atime``/``noatime`` mount options. The store must be
on a local filesystem (``flock`` semantics).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

from accel.errors import ContentError, DigestMismatchError
from accel.oci import digest as _digest

_CHUNK: Final = 1 << 20
_NAME_RE: Final = re.compile(r"[^A-Za-z0-9_.-]+")

_local_locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}
_local_locks_guard = threading.Lock()
_clock_guard = threading.Lock()
_last_use_ns = 0


@dataclass(frozen=True)
class GCResult:
    removed: list[str] = field(default_factory=list)
    freed: int = 0
    total_after: int = 0


class ContentStore:
    """Blobs by digest, written atomically and verified, with leases, fetch locks and LRU GC."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._ingest = self.root / "ingest"
        self._locks = self.root / "locks"
        self._leases = self.root / "leases"
        try:
            for d in (self._blobs / "sha256", self._ingest, self._locks, self._leases):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ContentError(f"cannot create content store at {self.root}: {exc.strerror}") from None

    @classmethod
    def for_work_dir(cls, work_dir: str | os.PathLike[str]) -> ContentStore:
        """The store of a ``provider.work_dir``: ``<work_dir>/content``."""
        return cls(Path(work_dir) / "content")

    def __repr__(self) -> str:
        return f"ContentStore({str(self.root)!r})"

    # --- reading ----------------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = _digest.validate(digest).split(":", 1)
        return self._blobs / algorithm / hex_digest

    def has(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise ContentError(f"blob {digest} is not in the content store") from None

    def path(self, digest: str) -> Path:
        """The committed blob's path (marks it used); ContentError if it is missing."""
        path = self._blob_path(digest)
        if not _touch(path):
            raise ContentError(f"blob {digest} is not in the content store")
        return path

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for reading and mark it used. Hold a lease on it while reading."""
        path = self._blob_path(digest)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise ContentError(f"blob {digest} is not in the content store") from None
        _touch(path)
        return f

    def read_bytes(self, digest: str) -> bytes:
        """The whole blob, verified against its digest (meant for manifests and configs)."""
        with self.open(digest) as f:
            data = f.read()
        _digest.verify(data, digest, "content store blob")
        return data

    def digests(self) -> Iterator[str]:
        """Every committed blob's digest."""
        for algorithm, entry in self._scan():
            yield f"{algorithm}:{entry.name}"

    def total_size(self) -> int:
        return sum(_stat_size(entry) for _, entry in self._scan())

    def _scan(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        for alg_dir in self._blobs.iterdir():
            if not alg_dir.is_dir():
                continue
            with os.scandir(alg_dir) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                        yield alg_dir.name, entry

    # --- writing ----------------------------------------------------------------------------------------

    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None, lease: Lease | None = None
    ) -> BlobWriter:
        """A writer for a new blob; ``commit()`` verifies it and (with ``lease``) leases it atomically."""
        if expected_digest is not None:
            _digest.validate(expected_digest)
        return BlobWriter(self, expected_digest, expected_size, lease)

    def write_bytes(self, data: bytes, expected_digest: str | None = None, lease: Lease | None = None) -> str:
        with self.writer(expected_digest, len(data), lease) as w:
            w.write(data)
            return w.commit()[0]

    def ingest(
        self,
        stream: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        lease: Lease | None = None,
    ) -> tuple[str, int]:
        """Copy ``stream`` into a blob; returns ``(digest, size)``."""
        with self.writer(expected_digest, expected_size, lease) as w:
            while chunk := stream.read(_CHUNK):
                w.write(chunk)
            return w.commit()

    # --- locks and leases -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def fetch_lock(self, digest: str) -> Iterator[None]:
        """Serialise fetches of one digest across threads and processes (check ``has`` once inside)."""
        algorithm, hex_digest = _digest.validate(digest).split(":", 1)
        path = self._locks / f"{algorithm}-{hex_digest}.lock"
        with _local_lock((str(self.root.resolve()), digest)):
            fd = _lock_path_file(path)
            try:
                yield
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                os.close(fd)

    def lease(self, name: str | None = None) -> Lease:
        """A new lease (held from now until ``release()`` or the end of its ``with`` block)."""
        return Lease(self, name or "lease")

    def leased(self) -> set[str]:
        """Digests held by live leases (of any process)."""
        with self._gc_lock(exclusive=False):
            return self._live_leases(remove_stale=False)

    @contextlib.contextmanager
    def _gc_lock(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _live_leases(self, remove_stale: bool) -> set[str]:
        digests: set[str] = set()
        for path in self._leases.glob("*.lease"):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    with os.fdopen(os.dup(fd), "r") as f:
                        lines = f.read().splitlines()[1:]
                    digests.update(line for line in lines if _digest.is_digest(line))
                    continue
                if remove_stale:  # nobody holds it: its process is gone
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return digests

    # --- garbage collection -----------------------------------------------------------------------------

    def gc(self, threshold: int) -> GCResult:
        """Remove least recently used, unleased blobs until the store holds at most ``threshold`` bytes.

        Also removes stale lease files and temporary files of writers that died.
        """
        with self._gc_lock(exclusive=True):
            protected = self._live_leases(remove_stale=True)
            self._remove_orphan_ingests()
            blobs: list[tuple[int, str, str, int]] = []
            for algorithm, entry in self._scan():
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                blobs.append((st.st_mtime_ns, entry.path, f"{algorithm}:{entry.name}", st.st_size))
            total = sum(b[3] for b in blobs)
            removed: list[str] = []
            freed = 0
            for _, path, digest, size in sorted(blobs):
                if total <= threshold:
                    break
                if digest in protected:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(digest)
                    freed += size
                total -= size
            return GCResult(removed, freed, total)

    def delete(self, digest: str) -> bool:
        """Remove one blob (e.g. found corrupt) unless a live lease holds it; True if it was removed."""
        path = self._blob_path(digest)
        with self._gc_lock(exclusive=True):
            if digest in self._live_leases(remove_stale=False):
                return False
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

    def _remove_orphan_ingests(self) -> None:
        for path in self._ingest.iterdir():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, IsADirectoryError):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)


class BlobWriter:
    """Writes one blob to a temporary file; ``commit()`` verifies it and moves it into place.

    Supports ``write``, ``tell`` and restarting with ``seek(0)`` + ``truncate()``. Leaving the ``with``
    block without committing (or with an exception) deletes the temporary file.
    """

    def __init__(
        self, store: ContentStore, expected_digest: str | None, expected_size: int | None, lease: Lease | None
    ) -> None:
        self._store = store
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self._lease = lease
        algorithm = expected_digest.split(":", 1)[0] if expected_digest else "sha256"
        self._digester = _digest.Digester(algorithm)
        with store._gc_lock(exclusive=False):
            fd, name = tempfile.mkstemp(dir=store._ingest, prefix="w-")
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "w+b")
        self.committed: tuple[str, int] | None = None
        self._watcher: Callable[[int], None] | None = None
        self._on_end: Callable[[tuple[str, int] | None], None] | None = None

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise ContentError("blob writer is closed")
        return self._file

    def write(self, data: bytes | bytearray | memoryview) -> int:
        file = self._open_file()
        file.write(data)
        self._digester.update(data)
        if self._watcher is not None:
            file.flush()
            self._watcher(self._digester.size)
        return len(data)

    def watch(self, watcher: Callable[[int], None] | None) -> None:
        """Call ``watcher(size)`` after every write, once the bytes are on disk (``size`` 0 after a
        restart); it may raise to stop the writing."""
        self._watcher = watcher

    def on_end(self, callback: Callable[[tuple[str, int] | None], None] | None) -> None:
        """Call ``callback((digest, size))`` once the blob is committed, ``callback(None)`` once it is
        discarded instead (closed uncommitted, or its check failed); exactly once either way."""
        self._on_end = callback

    def open_reader(self) -> int:
        """A read-only descriptor of the blob being written; it stays valid after commit or discard."""
        return os.open(self._tmp, os.O_RDONLY | os.O_CLOEXEC)

    def tell(self) -> int:
        return self._digester.size

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Only ``seek(0)`` is supported: it restarts the blob (call ``truncate()`` next)."""
        if offset != 0 or whence != os.SEEK_SET:
            raise ContentError("blob writer can only seek to 0 (restart)")
        self._open_file().seek(0)
        self._digester = _digest.Digester(self._digester.algorithm)
        if self._watcher is not None:
            self._watcher(0)
        return 0

    def truncate(self, size: int | None = None) -> int:
        if size not in (None, self._digester.size):
            raise ContentError("blob writer can only truncate at its current position")
        return self._open_file().truncate()

    def writable(self) -> bool:
        return self._file is not None

    def seekable(self) -> bool:
        """True while open: the blob can be restarted (``seek(0)``), which is all a writer may rewind to."""
        return self._file is not None

    def flush(self) -> None:
        self._open_file().flush()

    def commit(self) -> tuple[str, int]:
        """Verify, fsync and move the blob into the store; returns ``(digest, size)``."""
        f = self._open_file()
        digest, size = self._digester.digest, self._digester.size
        try:
            if self.expected_size is not None and size != self.expected_size:
                raise DigestMismatchError(
                    f"blob {self.expected_digest or digest}: size mismatch: "
                    f"expected {self.expected_size}, got {size}"
                )
            if self.expected_digest is not None and digest != self.expected_digest:
                raise DigestMismatchError(
                    f"blob digest mismatch: expected {self.expected_digest}, got {digest}"
                )
            f.flush()
            os.fsync(f.fileno())
            dest = self._store._blob_path(digest)
            with self._store._gc_lock(exclusive=False):
                if self._lease is not None:
                    self._lease._add_locked([digest])
                if _touch(dest):
                    self._tmp.unlink(missing_ok=True)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _set_used(self._tmp)
                    os.replace(self._tmp, dest)
                    _fsync_dir(dest.parent)
        except BaseException:
            self.close()
            raise
        self.committed = (digest, size)
        self.close()
        return digest, size

    def close(self) -> None:
        """Discard the temporary file (a no-op after commit)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.committed is None:
            self._tmp.unlink(missing_ok=True)
        ended, self._on_end = self._on_end, None
        if ended is not None:
            ended(self.committed)


class Lease:
    """Protects digests from GC until released; visible to other processes, void once its process dies."""

    def __init__(self, store: ContentStore, name: str) -> None:
        self._store = store
        self.name = name
        self.id = f"{_NAME_RE.sub('_', name)[:64]}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._path = store._leases / f"{self.id}.lease"
        self._digests: set[str] = set()
        self._guard = threading.Lock()
        header = json.dumps({"name": name, "pid": os.getpid(), "created": time.time()}) + "\n"
        with store._gc_lock(exclusive=False):
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, header.encode())
        self._fd: int | None = fd

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(self._digests)

    @property
    def active(self) -> bool:
        return self._fd is not None

    def add(self, *digests: str) -> None:
        """Protect ``digests`` (present or not yet fetched) from GC; effective when this returns."""
        for d in digests:
            _digest.validate(d)
        with self._store._gc_lock(exclusive=False):
            self._add_locked(digests)

    def _add_locked(self, digests: Iterable[str]) -> None:
        with self._guard:
            if self._fd is None:
                raise ContentError(f"lease {self.name!r} was released")
            new = [d for d in digests if d not in self._digests]
            if new:
                os.write(self._fd, "".join(f"{d}\n" for d in new).encode())
                self._digests.update(new)

    def release(self) -> None:
        with self._guard:
            if self._fd is None:
                return
            self._path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _touch(path: Path) -> bool:
    """Mark a blob used now; False if it does not exist."""
    try:
        _set_used(path)
    except FileNotFoundError:
        return False
    except PermissionError:
        # A blob committed by another user sharing the work_dir: LRU tracking is best effort.
        return path.is_file()
    return True


def _set_used(path: Path) -> None:
    global _last_use_ns
    # Explicit, strictly increasing nanosecond times: the kernel's own timestamps are coarse (a clock
    # tick), which would make LRU order ambiguous between blobs used in quick succession.
    with _clock_guard:
        now = max(time.time_ns(), _last_use_ns + 1)
        _last_use_ns = now
    os.utime(path, ns=(now, now))


def _stat_size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_path_file(path: Path) -> int:
    """Open and exclusively flock ``path``, retrying if it was unlinked by its previous holder meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def _local_lock(key: tuple[str, str]) -> Iterator[None]:
    with _local_locks_guard:
        lock, users = _local_locks.get(key, (threading.Lock(), 0))
        _local_locks[key] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _local_locks_guard:
            lock, users = _local_locks[key]
            if users == 1:
                del _local_locks[key]
            else:
                _local_locks[key] = (lock, users - 1)
