"""Random access to a built blob, shared by the eStargz and zstd:chunked readers and verifiers."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class BlobReader(Protocol):
    """Random access to a blob."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, n: int) -> bytes: ...


class BytesBlob:
    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]


class FileBlob:
    """A blob in a file (``pread``, so it is safe to share between threads)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file  # keeps the descriptor open
        self._fd = file.fileno()
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, n: int) -> bytes:
        return os.pread(self._fd, n, offset)


def as_blob(obj: BlobReader | bytes | BinaryIO) -> BlobReader:
    if isinstance(obj, bytes | bytearray):
        return BytesBlob(bytes(obj))
    if hasattr(obj, "read_at"):
        return cast(BlobReader, obj)
    return FileBlob(obj)


class BlobStream(io.RawIOBase):
    """A blob as a file: read from its start to decompress the whole of it, or seek first for readers
    that take a seekable file (each read is one ``read_at``)."""

    def __init__(self, reader: BlobReader) -> None:
        self._reader = reader
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._reader.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: WriteableBuffer, /) -> int:
        view = memoryview(buf).cast("B")
        data = self._reader.read_at(self._pos, max(0, min(len(view), self._reader.size - self._pos)))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass(slots=True)
class VerifyResult:
    """What a full verification found: the layer's diff_id and size, its chunks and entries."""

    diff_id: str
    uncompressed_size: int
    chunks: int
    chunk_bytes: int
    entries: int
