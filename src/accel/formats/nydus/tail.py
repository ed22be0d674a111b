"""A layer's bootstrap and blob meta, read from the end of a Nydus blob through ranged reads.

A blob converted earlier (found in a remote cache image) holds everything a merge needs in its trailer:
the ToC sits behind the last 512-byte tar header, and points at ``image.boot``, ``blob.meta`` and
``blob.meta.header``. Reading those few ranges costs kilobytes, not the blob. A RAFS v5 blob has no ToC and
no blob meta: it ends with its uncompressed ``image.boot`` and that entry's tar header.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.chunkcodec import decompress
from accel.formats.nydus.ondisk import TocEntry, decode_tar_header

ReadAt = Callable[[int, int], bytes]
_MAX_TOC = 1 << 20
_MAX_SECTION = 256 << 20


def read_layer_meta(read_at: ReadAt, size: int) -> tuple[bytes, bytes]:
    """``(bootstrap, blob_meta)`` of the blob of ``size`` bytes; blob_meta is b"" for a layer without data.

    ``blob_meta`` is what the bootstrap layer stores as ``image/<digest>.blob.meta``: the uncompressed
    chunk-info array padded to 4 KiB, then the 4 KiB blob meta header. Every piece is checked against the
    digest the ToC records for it.
    """
    if size < c.TAR_BLOCK:
        raise FormatError(f"blob of {size} bytes has no tar trailer")
    header = decode_tar_header(read_at(size - c.TAR_BLOCK, c.TAR_BLOCK))
    if header.name == c.ENTRY_BOOTSTRAP:
        if not 0 < header.size <= min(_MAX_SECTION, size - c.TAR_BLOCK):
            raise FormatError(f"bad bootstrap size {header.size}", entry=c.ENTRY_BOOTSTRAP)
        return read_at(size - c.TAR_BLOCK - header.size, header.size), b""
    if header.name != c.TOC_NAME:
        raise FormatError(f"the blob does not end with its ToC (found {header.name!r})", entry=header.name)
    if header.size % c.TOC_ENTRY_SIZE or not 0 < header.size <= _MAX_TOC:
        raise FormatError(f"bad ToC size {header.size}", entry=c.TOC_NAME)
    raw = read_at(size - c.TAR_BLOCK - header.size, header.size)
    toc = {
        e.name: e for e in (TocEntry.decode(raw[i : i + c.TOC_ENTRY_SIZE]) for i in range(0, len(raw), 128))
    }
    bootstrap = _entry(read_at, size, toc, c.ENTRY_BOOTSTRAP)
    if c.ENTRY_META not in toc:
        return bootstrap, b""
    ci = _entry(read_at, size, toc, c.ENTRY_META)
    meta_header = _entry(read_at, size, toc, c.ENTRY_META_HEADER)
    return bootstrap, ci + bytes(-len(ci) % c.BLOCK_SIZE) + meta_header


def _entry(read_at: ReadAt, size: int, toc: dict[str, TocEntry], name: str) -> bytes:
    entry = toc.get(name)
    if entry is None:
        raise FormatError("the blob's ToC has no such entry", entry=name)
    end = entry.compressed_offset + entry.compressed_size
    if end > size or entry.compressed_size > _MAX_SECTION or entry.uncompressed_size > _MAX_SECTION:
        raise FormatError("ToC entry beyond the blob or too large", entry=name)
    data = read_at(entry.compressed_offset, entry.compressed_size)
    if entry.compressor != "none":
        data = decompress(entry.compressor, data, entry.uncompressed_size)
    if hashlib.sha256(data).digest() != entry.uncompressed_digest:
        raise FormatError("digest mismatch", entry=name)
    return data


def read_toc_digest(read_at: ReadAt, size: int) -> tuple[bytes, int]:
    """``(sha256, size)`` of the blob's ToC section (entries and their tar header), as a merge records it
    for an OCI-ref blob."""
    header = decode_tar_header(read_at(size - c.TAR_BLOCK, c.TAR_BLOCK))
    if header.name != c.TOC_NAME or header.size % c.TOC_ENTRY_SIZE or not 0 < header.size <= _MAX_TOC:
        raise FormatError("the blob does not end with a valid ToC", entry=header.name)
    section = read_at(size - c.TAR_BLOCK - header.size, header.size + c.TAR_BLOCK)
    return hashlib.sha256(section).digest(), len(section)
