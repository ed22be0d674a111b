"""Single-pass layer scanners: they hand the uncompressed tar stream to the tar reader while recording
soci's checkpoints and span digests on the way, so a layer is read and inflated exactly once.

The gzip scanner mirrors soci's ``generate_zinfo_from_fp`` (zlib's zran.c) on the shared
:class:`~accel.formats.zran.BlockInflater`: a checkpoint is taken at a block boundary that is not after the
last block once strictly more than ``span_size`` bytes were produced since the previous one (or at output 0,
i.e. right after the gzip header), its window "the 32 KiB of output before it" exactly as soci stores it.
"""

from __future__ import annotations

import hashlib

from accel.errors import FormatError
from accel.formats.soci.zinfo import BLOB_HEADER_SIZE, HEADER, POINT
from accel.formats.streams import ByteSource
from accel.formats.zran import BlockInflater


class _Stream:
    """What :class:`~accel.formats.tar.TarReader` needs from a stream."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buf: memoryview | bytearray) -> int:
        data = self.read(len(buf))
        memoryview(buf)[: len(data)] = data
        return len(data)


class GzipScanner(BlockInflater):
    """Inflates a gzip layer (one or more members) on demand, recording checkpoints and span digests."""

    observes_input = True

    def __init__(self, source: ByteSource, span_size: int) -> None:
        if span_size <= 0:
            raise ValueError("span_size must be positive")
        super().__init__(source)
        self._span = span_size
        self._last = 0
        self._hasher: hashlib._Hash | None = None
        # Checkpoints go straight into the serialized blob (windows are 32 KiB each; no second copy).
        self.points: list[tuple[int, int, int]] = []
        self._blob = bytearray(BLOB_HEADER_SIZE)
        self.span_digests: list[str] = []

    def consumed(self, data: memoryview) -> None:
        if self._hasher is not None:
            self._hasher.update(data)

    def at_boundary(self, bits: int) -> None:
        out = self.uncompressed_size
        if not (out == 0 or out - self._last > self._span):
            return
        self.points.append((self.compressed_size, out, bits))
        self._blob += POINT.pack(self.compressed_size, out, bits)
        self._blob += self.window()
        self._last = out
        if self._hasher is not None:
            self.span_digests.append("sha256:" + self._hasher.hexdigest())
        hasher = hashlib.sha256()
        if bits:
            # The span starts with the partly used byte before the checkpoint (spans overlap by one byte).
            hasher.update(bytes((self.previous_byte(),)))
        self._hasher = hasher

    def finished(self) -> None:
        if self._hasher is not None:
            self.span_digests.append("sha256:" + self._hasher.hexdigest())
            self._hasher = None
        if not self.points:
            raise FormatError("gzip layer has no deflate block boundary to index")
        HEADER.pack_into(self._blob, 0, len(self.points), self._span)

    def take_blob(self) -> bytes:
        """The version 2 checkpoint blob (call once, after the layer was read to its end)."""
        blob = bytes(self._blob)
        self._blob = bytearray()
        return blob


class TarScanner(_Stream):
    """Passes an uncompressed layer through, hashing the fixed-size spans of soci's ``TarZinfo``."""

    def __init__(self, source: ByteSource, span_size: int) -> None:
        if span_size <= 0:
            raise ValueError("span_size must be positive")
        self._src = source
        self._span = span_size
        self._hasher = hashlib.sha256()
        self._in_span = 0
        self.size = 0
        self.done = False
        self.span_digests: list[str] = []

    def read(self, n: int = -1) -> bytes:
        if self.done:
            return b""
        data = self._src.read(n)
        self._hash(data)
        if not data or n < 0:
            self.done = True
            self._finish()
        return data

    def _hash(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self._span - self._in_span)
            self._hasher.update(view[:take])
            self._in_span += take
            self.size += take
            view = view[take:]
            if self._in_span == self._span:
                self.span_digests.append("sha256:" + self._hasher.hexdigest())
                self._hasher = hashlib.sha256()
                self._in_span = 0

    def _finish(self) -> None:
        if self._in_span or not self.span_digests:
            self.span_digests.append("sha256:" + self._hasher.hexdigest())

    def drain(self) -> None:
        while not self.done:
            self.read(1 << 20)
