"""Layer input: detect the compression by magic, decompress, and spool the plain tar to a seekable file
while it is parsed, so one pass over the input both indexes the entries and keeps their bytes."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO, cast

from accel.errors import FormatError
from accel.formats.layercodec import Compression, Prefixed, TeeStream, decompressed, sniff
from accel.formats.tar import TarEntry, TarReader

_READ = 32 << 10  # bytes per read while parsing an uncompressed file in place


class _Window:
    """Reads of a regular file from ``base`` on, with pread. Reads are short (``_READ`` bytes at most) and
    ``skip`` moves without reading, so parsing reads the headers and little of the contents."""

    def __init__(self, fd: int, base: int, size: int) -> None:
        self._fd = fd
        self._base = base
        self._size = size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        n = left if n < 0 else min(n, left)
        data = os.pread(self._fd, min(n, _READ), self._base + self._pos) if n > 0 else b""
        self._pos += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        got = os.preadv(self._fd, [view[:n]], self._base + self._pos) if n else 0
        self._pos += got
        return got

    def skip(self, n: int) -> int:
        step = max(0, min(n, self._size - self._pos))
        self._pos += step
        return step


def _regular_file(src: BinaryIO) -> tuple[int, int, int] | None:
    """(fd, position, size) when ``src`` is a regular file we can pread instead of copying."""
    try:
        fd = src.fileno()
        st = os.fstat(fd)
        pos = src.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return fd, pos, st.st_size - pos


_PAGE = mmap.PAGESIZE


class MappedTar:
    """A view of the plain tar, ``size`` bytes at ``base`` of a file, without copying them.

    ``grow`` (for a tar still being spooled) returns how many bytes the file holds now; the mapping is
    extended when a slice reaches past it. The mapping is shared and read-only, so it is not charged
    against the memory commit limit however large the layer. Touched pages count in our resident set
    although they are the kernel's page cache, so :meth:`release` drops them once they are used. The file
    must not shrink while mapped (a page past its end is a SIGBUS): it is our own spool, or a source file
    such as a content-store blob, which is replaced, never truncated.
    """

    def __init__(self, fd: int, base: int, size: int, grow: Callable[[], int] | None = None) -> None:
        self._fd = fd
        self._base = base
        self._grow = grow
        self._map: mmap.mmap | None = None
        self._view = memoryview(b"")
        self.size = 0
        self._extend(size)

    def _extend(self, size: int) -> None:
        if size <= self.size:
            return
        # Slices of an earlier mapping keep it alive; it is unmapped when the last of them goes.
        self._map = mmap.mmap(self._fd, self._base + size, access=mmap.ACCESS_READ)
        self._view = memoryview(self._map)[self._base :]
        self.size = size

    def slice(self, offset: int, length: int) -> memoryview:
        end = offset + length
        if end > self.size and self._grow is not None:
            self._extend(self._grow())
        if offset < 0 or length < 0 or end > self.size:
            raise FormatError(f"layer: range {offset}+{length} is outside the tar ({self.size} bytes)")
        return self._view[offset:end]

    def release(self, offset: int, length: int) -> None:
        """Unmap the pages of a range already used; reading them again faults them back in from the file."""
        mapping = self._map  # the writer's emitter thread calls this while slices may extend the map
        if mapping is None or length <= 0:
            return
        start = (self._base + offset) // _PAGE * _PAGE
        end = min(len(mapping), -(-(self._base + offset + length) // _PAGE) * _PAGE)
        if end > start:
            mapping.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        self._view.release()
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a slice is still referenced: it keeps the mapping
                self._map.close()
            self._map = None


class SpooledLayer:
    """The plain tar of a layer, with its entries as Go's reader reports them.

    A compressed or non-seekable input is decompressed into a temporary file while it is parsed; an
    uncompressed regular file is read in place.
    """

    def __init__(self, src: BinaryIO, *, tmpdir: str | None = None) -> None:
        self._file: IO[bytes] | None = None
        self._map: MappedTar | None = None
        self._tee: TeeStream | None = None
        self._spooled = True  # the whole tar is in the file
        self._flushed = 0  # while spooling: bytes of the spool readable through the file
        self._parses = 0
        direct = _regular_file(src)
        head = os.pread(direct[0], 4, direct[1]) if direct is not None else src.read(4)
        self.compression: Compression = sniff(head)
        self.size = 0
        if direct is not None and self.compression == "none":
            self._fd, self._base, self.size = direct
            self._reader = TarReader(_Window(self._fd, self._base, self.size))
            return
        if direct is not None:
            src.seek(4, io.SEEK_CUR)
        self._file = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 - closed in close()
        self._fd, self._base = self._file.fileno(), 0
        raw = cast(BinaryIO, io.BufferedReader(Prefixed(head, src), 1 << 20))
        self._tee = TeeStream(decompressed(raw, self.compression), self._file.write, "layer")
        self._reader = TarReader(self._tee)
        self._spooled = False

    def entries(self) -> Iterator[TarEntry]:
        """Parse the tar, spooling it if needed; afterwards all of the input has been read.

        The content of an entry is in the spool once the next entry is parsed (see :meth:`ready_entries`).
        Called again, it parses the complete spool from the start.
        """
        if self._parses:
            self.finish()
            self._reader = TarReader(_Window(self._fd, self._base, self.size))
        self._parses += 1
        last: str | None = None
        try:
            for entry in self._reader:
                last = entry.name
                yield entry
            self.finish()
        except FormatError as exc:
            if exc.entry is None and last is not None:
                raise FormatError(f"{exc.reason} (after this entry)", entry=last) from None
            raise

    def finish(self) -> None:
        """Spool the rest of the input (a parse that stopped early leaves some unread)."""
        if self._spooled or self._tee is None or self._file is None:
            return
        while self._tee.read(1 << 20):
            pass
        self.size = self._spooled_size()
        self._spooled = True

    def _spooled_size(self) -> int:
        assert self._tee is not None and self._file is not None
        self._file.flush()
        self._flushed = self._tee.count
        return self._flushed

    def _make_readable(self, end: int) -> None:
        """Make the tar's bytes before ``end`` (already parsed) readable through the file, by any thread."""
        if not self._spooled and end > self._flushed:
            self._spooled_size()

    def ready_entries(self) -> Iterator[TarEntry]:
        """Like :meth:`entries`, but each entry only once its content can be read from the spool (also by
        other threads): when the next entry has been parsed, or the tar has ended."""
        previous: TarEntry | None = None
        for entry in self.entries():
            if previous is not None:
                self._make_readable(previous.data_offset + previous.data_length)
                yield previous
            previous = entry
        if previous is not None:
            yield previous

    @property
    def eof_offset(self) -> int:
        """Where Go's tar reader stops: after the end-of-archive blocks (or at the end of the data)."""
        return self._reader.eof_offset

    def mapped(self) -> MappedTar:
        """The plain tar mapped into memory, growing while it is spooled; closed with the layer."""
        if self._map is None:
            grow = None if self._spooled else self._spooled_size
            self._map = MappedTar(self._fd, self._base, self.size if self._spooled else 0, grow)
        return self._map

    def pread(self, offset: int, n: int) -> bytes:
        """``n`` bytes of the tar at ``offset``; while spooling, on the parsing thread or bytes of an entry
        :meth:`ready_entries` has handed out."""
        self._make_readable(offset + n)
        data = os.pread(self._fd, n, self._base + offset)
        if len(data) != n:
            raise FormatError(f"layer: short read at {offset}")
        return data

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> SpooledLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
