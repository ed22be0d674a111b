"""zstd:chunked layers in both flavours.

* ``flavour="storage"`` (default): containers/storage's format (podman, CRI-O, buildah). The original tar
  bytes are kept, so the diff_id does not change; tar-split, the same rolling-checksum and ``zeros`` chunks
  as containers/storage (chunk digests deduplicate with its layers), 64-byte footer, annotations
  ``io.github.containers.zstd-chunked.*``.
* ``flavour="stargz"``: stargz-snapshotter's format (containerd): the eStargz layout in zstd frames, 40-byte
  footer, annotations ``io.containers.zstd-chunked.*`` plus ``containerd.io/snapshot/stargz/toc.digest``;
  the diff_id changes. Read/verify it with :mod:`accel.formats.estargz`, whose layout it reuses
  (:func:`accel.formats.estargz.build_layout`).

Both write through :mod:`accel.formats.chunked` (spool, member writer, zstd compressor), as eStargz does.

Public API::

    build(src, dst, ZstdChunkedOptions(...)) -> BuildResult
    open_storage_blob(blob, annotations=None) -> StorageBlob
    verify_storage(blob, manifest_checksum, annotations=None, original=None) -> VerifyResult
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Literal

from accel.formats.chunked import BuildResult
from accel.formats.estargz import DEFAULT_CHUNK_SIZE, BuildOptions
from accel.formats.streams import ByteSink
from accel.formats.zstdchunked.reader import (
    StorageBlob,
    is_storage_zstdchunked,
    open_storage_blob,
    read_file,
    verify_storage,
)
from accel.formats.zstdchunked.stargz import build_stargz
from accel.formats.zstdchunked.storage import (
    DEFAULT_CHUNK_SIZE as STORAGE_CHUNK_SIZE,
)
from accel.formats.zstdchunked.storage import (
    MANIFEST_CHECKSUM_KEY,
    MANIFEST_POSITION_KEY,
    MEDIA_TYPE,
    TARSPLIT_POSITION_KEY,
    StorageOptions,
    build_storage,
)

Flavour = Literal["storage", "stargz"]


@dataclass(frozen=True, slots=True)
class ZstdChunkedOptions:
    """``level`` None = 3. ``chunk_size`` None = 64 KiB (storage) / 4 MiB (stargz); for the storage
    flavour it is the rolling checksum's average chunk size and must be a power of two (only the default
    gives containers/storage's chunks). ``prioritized_files`` applies to the stargz flavour only."""

    flavour: Flavour = "storage"
    level: int | None = None
    chunk_size: int | None = None
    threads: int = 0
    prioritized_files: tuple[str, ...] = ()
    tmpdir: str | None = None


def build(src: BinaryIO, dst: ByteSink, options: ZstdChunkedOptions | None = None) -> BuildResult:
    """Convert a layer (tar, tar+gzip or tar+zstd) to zstd:chunked of the chosen flavour."""
    opts = options or ZstdChunkedOptions()
    if opts.flavour == "stargz":
        esgz = BuildOptions(
            compression_level=opts.level,
            prioritized_files=opts.prioritized_files,
            threads=opts.threads,
            tmpdir=opts.tmpdir,
            chunk_size=opts.chunk_size or DEFAULT_CHUNK_SIZE,
        )
        return build_stargz(src, dst, esgz)
    storage = StorageOptions(
        level=3 if opts.level is None else opts.level,
        chunk_size=opts.chunk_size or STORAGE_CHUNK_SIZE,
        threads=opts.threads,
        tmpdir=opts.tmpdir,
    )
    return build_storage(src, dst, storage)


__all__ = [
    "MANIFEST_CHECKSUM_KEY",
    "MANIFEST_POSITION_KEY",
    "MEDIA_TYPE",
    "TARSPLIT_POSITION_KEY",
    "BuildResult",
    "Flavour",
    "StorageBlob",
    "ZstdChunkedOptions",
    "build",
    "is_storage_zstdchunked",
    "open_storage_blob",
    "read_file",
    "verify_storage",
]
