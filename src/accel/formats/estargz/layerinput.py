"""Layer input: detect the compression by magic, decompress, and spool the plain tar to a seekable file
while it is parsed, so one pass over the input both indexes the entries and keeps their bytes."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator
from typing import IO, BinaryIO, cast

import isal.isal_zlib as _isal_zlib
import zstandard

from accel.errors import FormatError
from accel.formats.compression import Compression, Prefixed, decompressed, sniff
from accel.formats.tar import TarEntry, TarReader

_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    OSError,
    zlib.error,
    cast("type[BaseException]", _isal_zlib.error),
    zstandard.ZstdError,
)


class _Tee(io.RawIOBase):
    """Reads from ``src`` and copies every byte read into ``sink``; counts them."""

    def __init__(self, src: IO[bytes], sink: IO[bytes]) -> None:
        self._src = src
        self._sink = sink
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._src.read(n)
        except _DECOMPRESS_ERRORS as exc:
            raise FormatError(f"layer decompression failed after {self.count} bytes: {exc}") from None
        if data:
            self._sink.write(data)
            self.count += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        memoryview(buf).cast("B")[: len(data)] = data
        return len(data)


class _Window(io.RawIOBase):
    """Sequential reads of a regular file from ``base`` on, with pread (seekable so the parser skips)."""

    def __init__(self, fd: int, base: int, size: int) -> None:
        self._fd = fd
        self._base = base
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: 0, 1: self._pos, 2: self._size}[whence] + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buf), self._size - self._pos))
        data = os.pread(self._fd, n, self._base + self._pos)
        memoryview(buf).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)


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


class SpooledLayer:
    """The plain tar of a layer, with its entries as Go's reader reports them.

    A compressed or non-seekable input is decompressed into a temporary file while it is parsed; an
    uncompressed regular file is read in place.
    """

    def __init__(self, src: BinaryIO, *, tmpdir: str | None = None) -> None:
        self._file: IO[bytes] | None = None
        self._tee: _Tee | None = None
        self._map: mmap.mmap | None = None
        self._map_tried = False
        direct = _regular_file(src)
        head = os.pread(direct[0], 4, direct[1]) if direct is not None else src.read(4)
        self.compression: Compression = sniff(head)
        self.size = 0
        if direct is not None and self.compression == "none":
            self._fd, self._base, self.size = direct
            self._reader = TarReader(io.BufferedReader(_Window(self._fd, self._base, self.size), 1 << 20))
            return
        if direct is not None:
            src.seek(4, io.SEEK_CUR)
        self._file = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 - closed in close()
        self._fd, self._base = self._file.fileno(), 0
        raw = cast(BinaryIO, io.BufferedReader(Prefixed(head, src), 1 << 20))
        self._tee = _Tee(decompressed(raw, self.compression), self._file)
        self._reader = TarReader(self._tee)  # type: ignore[arg-type]

    def entries(self) -> Iterator[TarEntry]:
        """Parse the tar (spooling it if needed); afterwards all of the input has been read."""
        last: str | None = None
        try:
            for entry in self._reader:
                last = entry.name
                yield entry
            if self._tee is not None:
                while self._tee.read(1 << 20):
                    pass
        except FormatError as exc:
            if exc.entry is None and last is not None:
                raise FormatError(f"{exc.reason} (after this entry)", entry=last) from None
            raise
        if self._tee is not None and self._file is not None:
            self.size = self._tee.count
            self._file.flush()

    @property
    def eof_offset(self) -> int:
        """Where Go's tar reader stops: after the end-of-archive blocks (or at the end of the data)."""
        return self._reader.eof_offset

    def pread(self, offset: int, n: int) -> bytes:
        data = os.pread(self._fd, n, self._base + offset)
        if len(data) != n:
            raise FormatError(f"layer: short read at {offset}")
        return data

    def view(self, offset: int, n: int) -> memoryview | bytes:
        """Like :meth:`pread` but without a copy when the layer can be memory-mapped (after parsing)."""
        if self._map is None and self._map_tried is False:
            self._map_tried = True
            try:
                self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                self._map = None
        if self._map is None or self._base + offset + n > len(self._map):
            return self.pread(offset, n)
        start = self._base + offset
        return memoryview(self._map)[start : start + n]

    def close(self) -> None:
        if self._map is not None:
            # A view may still be alive on an error path; the map then goes with its last reference.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> SpooledLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
