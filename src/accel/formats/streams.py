"""The stream protocols the format libraries read layers from and write blobs to.

Builders and parsers need little of a file: a source is read front to back, a sink is written in order.
Naming just that lets any object with those methods be passed without a cast, from a decompressing
wrapper to :class:`accel.content.BlobWriter`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class ByteSource(Protocol):
    """Read from start to end; ``read`` returns fewer bytes than asked (empty at the end) only when the
    stream has no more. A source may also offer ``skip(n) -> int``, ``readinto``, ``seekable``/``seek``;
    :class:`accel.formats.tar.TarReader` uses them when present."""

    def read(self, n: int = -1, /) -> bytes: ...


class ByteSink(Protocol):
    """Written in order, each call appending ``data``."""

    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


@runtime_checkable
class RewindableSink(ByteSink, Protocol):
    """A sink that can be cut back to an earlier position (when ``seekable()``): a builder that writes
    while it parses rewinds it and starts again when the input turns out to need two passes."""

    def seekable(self) -> bool: ...

    def tell(self) -> int: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def truncate(self, size: int | None = None, /) -> int: ...
