"""Checkpoint ("zinfo") blobs: soci's gzip checkpoint table and the ``TarZinfo`` of uncompressed layers.

Gzip blob (version 2, little-endian, packed): ``int32 have | int64 span_size`` then per checkpoint
``int64 in | int64 out | uint8 bits | 32 KiB window``. Legacy version 1 blobs omit checkpoint 0, which is then
``(in=10, out=0, bits=0, zero window)``; the version is told apart by the blob length, as soci does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import flatbuffers

from accel.errors import FormatError

WINSIZE = 32768
BLOB_HEADER_SIZE = 12
PACKED_CHECKPOINT_SIZE = 8 + 8 + 1 + WINSIZE
TAR_ZINFO_VERSION = 2

HEADER = struct.Struct("<iq")
POINT = struct.Struct("<qqB")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A place where inflating can restart: compressed offset of the first full byte, uncompressed offset,
    unused bits of the byte before ``compressed`` (0-7), and the 32 KiB of output before ``uncompressed``."""

    compressed: int
    uncompressed: int
    bits: int
    window: bytes

    @property
    def span_start(self) -> int:
        """First compressed byte a span starting here needs (the partial byte when ``bits`` is set)."""
        return self.compressed - (1 if self.bits else 0)


@dataclass(frozen=True, slots=True)
class GzipZinfo:
    span_size: int
    checkpoints: tuple[Checkpoint, ...]
    version: int = 2

    def spans(self, compressed_size: int) -> list[tuple[int, int]]:
        """Compressed byte range ``[start, end)`` of each span (the last one runs to the end of the blob)."""
        cps = self.checkpoints
        out = []
        for i, cp in enumerate(cps):
            end = cps[i + 1].compressed if i + 1 < len(cps) else compressed_size
            out.append((cp.span_start, end))
        return out


@dataclass(frozen=True, slots=True)
class TarZinfo:
    span_size: int
    size: int
    version: int = TAR_ZINFO_VERSION

    @property
    def max_span_id(self) -> int:
        return tar_max_span_id(self.span_size, self.size)

    def spans(self) -> list[tuple[int, int]]:
        return tar_spans(self.span_size, self.size)


def encode_gzip_zinfo(span_size: int, checkpoints: list[Checkpoint] | tuple[Checkpoint, ...]) -> bytes:
    """The version 2 blob soci writes."""
    parts = [HEADER.pack(len(checkpoints), span_size)]
    for cp in checkpoints:
        if len(cp.window) != WINSIZE:
            raise ValueError("checkpoint window must be 32768 bytes")
        parts.append(POINT.pack(cp.compressed, cp.uncompressed, cp.bits))
        parts.append(cp.window)
    return b"".join(parts)


def decode_gzip_zinfo(blob: bytes) -> GzipZinfo:
    """Parse a version 2 (or legacy version 1) blob; FormatError when its length does not fit its count."""
    if len(blob) < BLOB_HEADER_SIZE:
        raise FormatError("gzip zinfo blob is shorter than its header")
    have, span_size = HEADER.unpack_from(blob, 0)
    if have <= 0:
        raise FormatError(f"gzip zinfo blob has {have} checkpoints")
    claimed = BLOB_HEADER_SIZE + have * PACKED_CHECKPOINT_SIZE
    if claimed == len(blob):
        version, points = 2, []
    elif claimed - PACKED_CHECKPOINT_SIZE == len(blob):
        version, points = 1, [Checkpoint(10, 0, 0, bytes(WINSIZE))]
    else:
        raise FormatError(f"gzip zinfo blob length {len(blob)} does not match {have} checkpoints")
    pos = BLOB_HEADER_SIZE
    view = memoryview(blob)
    while pos < len(blob):
        cin, cout, bits = POINT.unpack_from(blob, pos)
        pos += POINT.size
        points.append(Checkpoint(cin, cout, bits, bytes(view[pos : pos + WINSIZE])))
        pos += WINSIZE
    return GzipZinfo(span_size, tuple(points), version)


def tar_max_span_id(span_size: int, size: int) -> int:
    return size // span_size - (1 if size % span_size == 0 else 0)


def tar_spans(span_size: int, size: int) -> list[tuple[int, int]]:
    return [
        (i * span_size, min((i + 1) * span_size, size)) for i in range(tar_max_span_id(span_size, size) + 1)
    ]


def encode_tar_zinfo(span_size: int, size: int) -> bytes:
    """``zinfo.TarZinfo {version:int32; span_size:int64; size:int64}``, fields added in soci's order."""
    builder = flatbuffers.Builder(0)
    builder.StartObject(3)
    builder.PrependInt32Slot(0, TAR_ZINFO_VERSION, 0)
    builder.PrependInt64Slot(1, span_size, 0)
    builder.PrependInt64Slot(2, size, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


def decode_tar_zinfo(blob: bytes) -> TarZinfo:
    try:
        table = flatbuffers.table.Table(blob, flatbuffers.encode.Get(flatbuffers.packer.uoffset, blob, 0))
        values = []
        for slot, kind, default in ((0, flatbuffers.number_types.Int32Flags, 0), (1, None, 0), (2, None, 0)):
            off = table.Offset(4 + 2 * slot)
            flags = kind or flatbuffers.number_types.Int64Flags
            values.append(table.Get(flags, off + table.Pos) if off else default)
    except Exception as exc:
        raise FormatError(f"invalid TarZinfo checkpoints: {exc}") from exc
    version, span_size, size = values
    if span_size <= 0 or size < 0:
        raise FormatError(f"invalid TarZinfo (span_size {span_size}, size {size})")
    return TarZinfo(span_size, size, version)
