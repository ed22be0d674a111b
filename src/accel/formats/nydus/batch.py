"""Batch chunks (``nydus-image create --batch-size``): small chunks packed into one compressed unit.

What nydus writes (``storage/src/meta/batch.rs``, ``dump_file_chunk`` in ``builder/src/core/node.rs``,
``dump_meta_data`` in ``builder/src/core/blob.rs``) and how its readers resolve it (``next_batch`` in
``storage/src/cache/mod.rs``):

* A new chunk is batched when its file has exactly one chunk and the chunk is shorter than half the batch
  size. Its bytes go, unaligned, at the end of a buffer; before that the buffer is written out as one
  unit if adding the chunk would bring it to the batch size or beyond. Writing a chunk that is not
  batched, and the end of the blob, write the buffer out too.
* A unit is compressed as one piece with the blob's compressor (stored raw when that does not shrink it:
  the unit is compressed exactly when its two sizes differ) and is described by a ``BatchInflateContext``.
* Every chunk still takes its own 4K-aligned uncompressed range; the blob meta switches to chunk info v2.
  A batched chunk's entry has the unit's compressed offset, compressed size 0, flags COMPRESSED|BATCH and
  ``data`` = unit index << 32 | its offset in the unit's uncompressed bytes.
* The contexts follow the ci array in the blob meta (compressed with it); the header's ``s_ci_zran_*``
  fields give their offset, size and count, and the header and blob-table features gain
  BATCH|CHUNK_INFO_V2 whether or not any chunk was batched.
* In the bootstrap's chunk table a batched chunk keeps compressed offset and size 0 and no flags: nydus
  never fills them in, so its data is found through the blob meta only.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeGuard

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.chunkcodec import compress, decompress
from accel.formats.nydus.ondisk import BlobMetaHeader, CiV1, CiV2
from accel.formats.nydus.tree import Chunk

BATCH_FEATURES = c.BF_BATCH | c.BF_CHUNK_INFO_V2


@dataclass(frozen=True)
class BatchContext:
    """``BatchInflateContext`` (40 B): one unit's compressed size and unaligned uncompressed size."""

    FMT: ClassVar[str] = "<II32s"
    SIZE: ClassVar[int] = 40
    compressed_size: int
    uncompressed_size: int
    reserved: bytes = bytes(32)

    @classmethod
    def decode(cls, data: bytes) -> BatchContext:
        if len(data) < cls.SIZE:
            raise FormatError(f"truncated batch context: {len(data)} bytes", entry=c.ENTRY_META)
        return cls(*struct.unpack(cls.FMT, data[: cls.SIZE]))

    def encode(self) -> bytes:
        return struct.pack(self.FMT, self.compressed_size, self.uncompressed_size, self.reserved)

    @property
    def compressed(self) -> bool:
        return self.compressed_size != self.uncompressed_size


def parse_batch_size(text: str) -> int:
    """A ``--batch-size`` value as nydus-image reads it: ``0x`` hex or decimal, a u32; "" is off."""
    value = text.strip()
    if not value:
        return 0
    hexadecimal = value[:2] in ("0x", "0X")
    digits = value[2:] if hexadecimal else value
    # Only plain digits, as Rust's integer parsing takes them (Python's int() also allows "_" and signs).
    allowed = "0123456789abcdefABCDEF" if hexadecimal else "0123456789"
    if not digits or any(ch not in allowed for ch in digits):
        raise FormatError(f"invalid batch size {text!r}")
    number = int(digits, 16 if hexadecimal else 10)
    if number >= 1 << 32:
        raise FormatError(f"invalid batch size {text!r}")
    return number


def check_batch_size(batch_size: int, chunk_size: int, fs_version: int) -> None:
    """What ``get_batch_size`` of nydus-image's ``main.rs`` refuses (0 is off and always accepted)."""
    if batch_size == 0:
        return
    if fs_version != 6:
        raise FormatError("a non-zero batch size needs RAFS v6")
    if batch_size & (batch_size - 1) or not c.MIN_CHUNK_SIZE <= batch_size <= c.MAX_CHUNK_SIZE:
        raise FormatError(f"batch size {batch_size:#x} is not a power of two in [4 KiB, 16 MiB]")
    if batch_size > chunk_size:
        raise FormatError(f"batch size {batch_size:#x} is bigger than chunk size {chunk_size:#x}")


def is_batched(ci: CiV1 | CiV2) -> TypeGuard[CiV2]:
    return isinstance(ci, CiV2) and bool(ci.flags & c.CI2_BATCH)


def batch_ref(ci: CiV2) -> tuple[int, int]:
    """(unit index, offset in the unit's uncompressed bytes) of a batched chunk."""
    return ci.data >> 32, ci.data & 0xFFFF_FFFF


class BatchPacker:
    """The builder's side: the open unit, the contexts of the written ones, the ci v2 of batched chunks."""

    def __init__(self, batch_size: int, compressor: str) -> None:
        self.batch_size = batch_size
        self.compressor = compressor
        self.buf = bytearray()
        self.contexts: list[BatchContext] = []
        self.refs: dict[int, CiV2] = {}

    def takes(self, chunks_in_file: int, size: int) -> bool:
        return chunks_in_file == 1 and size < self.batch_size // 2

    def full_for(self, size: int) -> bool:
        return bool(self.buf) and len(self.buf) + size >= self.batch_size

    def add(self, ci_index: int, compressed_offset: int, chunk: Chunk, data: bytes | bytearray) -> None:
        """Put a chunk in the open unit, which will be written at ``compressed_offset``."""
        self.refs[ci_index] = CiV2(
            chunk.uncompressed_offset,
            chunk.uncompressed_size,
            compressed_offset,
            0,
            c.CI2_COMPRESSED | c.CI2_BATCH,
            len(self.contexts) << 32 | len(self.buf),
        )
        self.buf += data

    def close_unit(self) -> bytes | bytearray | None:
        """The open unit's stored bytes (None if it is empty); its context is recorded."""
        if not self.buf:
            return None
        stored, _ = compress(self.compressor, self.buf)
        self.contexts.append(BatchContext(len(stored), len(self.buf)))
        self.buf = bytearray()
        return stored

    def blob_meta(self, chunks: list[Chunk]) -> tuple[bytes, int]:
        """The uncompressed blob meta data: ci v2 for every chunk then the context table; and the table's
        offset in it."""
        ci = bytearray()
        for i, ch in enumerate(chunks):
            entry = self.refs.get(i)
            if entry is None:
                flags = c.CI2_COMPRESSED if ch.compressed else 0
                entry = CiV2(
                    ch.uncompressed_offset,
                    ch.uncompressed_size,
                    ch.compressed_offset,
                    ch.compressed_size,
                    flags,
                    0,
                )
            ci += entry.encode()
        table_offset = len(ci)
        for ctx in self.contexts:
            ci += ctx.encode()
        return bytes(ci), table_offset


def decode_batch_table(meta: bytes, header: BlobMetaHeader) -> list[BatchContext]:
    """The contexts after the ci array (``meta``: the uncompressed blob meta data), checked as nydusd's
    ``BlobCompressionContextInfo`` maps them."""
    if not header.features & c.BF_BATCH:
        return []
    count, offset, size = header.zran_count, header.zran_offset, header.zran_size
    if offset < header.ci_entries * c.CI_V2_SIZE or count * BatchContext.SIZE > size:
        raise FormatError(f"bad batch table: {count} contexts at {offset}, {size} bytes", entry=c.ENTRY_META)
    if offset + size > len(meta):
        raise FormatError("batch table beyond the blob meta", entry=c.ENTRY_META)
    return [BatchContext.decode(meta[offset + i * 40 : offset + (i + 1) * 40]) for i in range(count)]


def unit_bytes(
    ci: CiV2,
    contexts: list[BatchContext],
    compressor: str,
    read: Callable[[int, int], bytes],
) -> bytes:
    """The uncompressed bytes of a batched chunk's unit; ``read(offset, length)`` reads the blob."""
    index, _ = batch_ref(ci)
    if index >= len(contexts):
        raise FormatError(f"batch index {index} of {len(contexts)}", entry=c.ENTRY_META)
    ctx = contexts[index]
    if ctx.uncompressed_size > c.MAX_CHUNK_SIZE:
        raise FormatError(f"batch {index} is {ctx.uncompressed_size} bytes", entry=c.ENTRY_META)
    raw = read(ci.compressed_offset, ctx.compressed_size)
    if len(raw) != ctx.compressed_size:
        raise FormatError(f"batch {index} beyond the end of the blob", entry=c.ENTRY_BLOB)
    return decompress(compressor, raw, ctx.uncompressed_size) if ctx.compressed else bytes(raw)


def slice_chunk(ci: CiV2, unit: bytes) -> bytes:
    """A batched chunk's bytes out of its unit's uncompressed bytes."""
    _, offset = batch_ref(ci)
    end = offset + ci.uncompressed_size
    if end > len(unit):
        raise FormatError(f"batched chunk ends at {end}, its batch is {len(unit)} bytes", entry=c.ENTRY_BLOB)
    return unit[offset:end]
