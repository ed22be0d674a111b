"""A chunk dictionary: the chunks of an existing Nydus image, by digest, for a build to reference instead
of writing them again (``nydus-image create --chunk-dict bootstrap=<path>``,
``N:builder/src/core/chunk_dict.rs``).

The dictionary is read from the image's (merged) bootstrap alone: its chunk table gives every chunk's digest
and place in one of the image's blobs, its blob table the blobs themselves. The data blobs are never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from accel.errors import FormatError
from accel.formats.layercodec import decompressed
from accel.formats.nydus import constants as c
from accel.formats.nydus.ondisk import BlobEntry, ExtSuperBlock
from accel.formats.nydus.packaging import bootstrap_from_layer
from accel.formats.nydus.reader import read_bootstrap
from accel.formats.nydus.tail import ReadAt
from accel.formats.nydus.tree import Chunk

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# Ranged reads of a dictionary's bootstrap layer: large enough that a bootstrap of 100k files takes a few
# requests, small enough that the data blobs' metas after it are not fetched in one piece needlessly.
_RANGE = 1 << 20


@dataclass(frozen=True)
class ChunkDict:
    """The chunks of a dictionary bootstrap by digest; ``Chunk.blob_index`` indexes ``blobs``."""

    blobs: tuple[BlobEntry, ...]
    chunks: dict[bytes, Chunk]
    digester: str
    chunk_size: int

    @property
    def blob_ids(self) -> frozenset[str]:
        return frozenset(blob.blob_id for blob in self.blobs)

    def lookup(self, digest: bytes, size: int) -> Chunk | None:
        """The dictionary's chunk with this digest and uncompressed size (a digest alone could, in theory,
        name a chunk cut at another length: upstream checks the size too)."""
        chunk = self.chunks.get(digest)
        if chunk is None or chunk.uncompressed_size != size:
            return None
        return chunk


def read_chunk_dict(bootstrap: bytes) -> ChunkDict:
    """The chunk dictionary of a RAFS v6 bootstrap (normally an image's merged ``image.boot``)."""
    try:
        bs = read_bootstrap(bootstrap)
    except FormatError as exc:
        raise FormatError(f"chunk dictionary: {exc.reason}", entry=exc.entry) from exc
    blobs = []
    for blob in bs.blobs:
        if len(blob.blob_id) != 64 or blob.blob_id == c.PLACEHOLDER_BLOB_ID:
            raise FormatError(f"chunk dictionary: blob {blob.blob_id!r} has no usable id")
        # Referenced from another image, a dictionary blob is a separate blob, never the bootstrap's own.
        blobs.append(dataclasses.replace(blob, features=blob.features & ~c.BF_INLINED_FS_META))
    chunks: dict[bytes, Chunk] = {}
    for info in bs.chunk_table:
        if info.blob_index >= len(blobs):
            raise FormatError(f"chunk dictionary: chunk {info.index} names blob {info.blob_index}")
        chunks.setdefault(
            info.digest,
            info.as_chunk(),
        )
    return ChunkDict(tuple(blobs), chunks, bs.digester, bs.chunk_size)


def bootstrap_blob_ids(bootstrap: bytes) -> list[str]:
    """The ids of a v6 bootstrap's blob table, in order, without decoding its tree (a per-layer bootstrap's
    own blob has the placeholder id)."""
    if len(bootstrap) < c.EXT_SB_OFFSET + ExtSuperBlock.SIZE:
        raise FormatError(f"bootstrap too small ({len(bootstrap)} bytes)", entry="superblock")
    ext = ExtSuperBlock.decode(bootstrap[c.EXT_SB_OFFSET : c.EXT_SB_OFFSET + ExtSuperBlock.SIZE])
    start, size = ext.blob_table_offset, ext.blob_table_size
    if start + size > len(bootstrap):
        raise FormatError("blob table beyond end of file", entry="blob table")
    return [
        BlobEntry.decode(bootstrap[start + i : start + i + BlobEntry.SIZE]).blob_id
        for i in range(0, size - size % BlobEntry.SIZE, BlobEntry.SIZE)
    ]


class _RangedStream(io.RawIOBase):
    """A blob read front to back through ranged reads, hashed on the way."""

    def __init__(self, read_at: ReadAt, size: int) -> None:
        self._read_at = read_at
        self._size = size
        self._pos = 0
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer, /) -> int:
        view = memoryview(buf).cast("B")
        want = min(len(view), _RANGE, self._size - self._pos)
        if want <= 0:
            return 0
        data = self._read_at(self._pos, want)
        if not data:
            raise FormatError(f"chunk dictionary: bootstrap layer ends at {self._pos} of {self._size}")
        view[: len(data)] = data
        self._pos += len(data)
        self.hash.update(data)
        return len(data)

    def drain(self) -> None:
        while self._pos < self._size:
            self.readinto(bytearray(min(_RANGE, self._size - self._pos)))


def bootstrap_from_layer_at(read_at: ReadAt, size: int, digest: str) -> bytes:
    """The bootstrap of a Nydus bootstrap layer (gzip or plain tar) read through ranged reads of it, checked
    against the layer's sha256 ``digest``; the image's data blobs stay where they are."""
    raw = _RangedStream(read_at, size)
    stream = decompressed(cast(io.BufferedReader, io.BufferedReader(raw, _RANGE)))
    bootstrap = bootstrap_from_layer(stream)
    raw.drain()
    if "sha256:" + raw.hash.hexdigest() != digest:
        raise FormatError(f"chunk dictionary: bootstrap layer does not match its digest {digest}")
    return bootstrap
