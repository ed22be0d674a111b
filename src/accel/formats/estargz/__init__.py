"""eStargz: building lazily-pullable gzip layers and reading/verifying them.

Public API::

    build(src, dst, BuildOptions(...)) -> BuildResult      # layer (tar / tar+gzip / tar+zstd) -> eStargz
    is_estargz(blob) -> bool                                # footer + TOC parse (gzip, legacy, stargz zstd)
    open_blob(blob) -> Blob                                 # footer + TOC
    verify(blob, toc_digest, full=True) -> VerifyResult     # Go VerifyTOC checks + every chunk + full stream

``blob`` is bytes, a binary file (read with pread) or any object with ``size`` and ``read_at(off, n)``.
The driver puts ``BuildResult.media_type`` and ``BuildResult.annotations`` on the layer descriptor and
``BuildResult.diff_id`` into the config's ``rootfs.diff_ids``. The spool, member writer and compressors are
:mod:`accel.formats.chunked`'s, shared with zstd:chunked; :func:`build_layout` is the eStargz layout with
another compressor and TOC ending (zstd:chunked's stargz flavour).
"""

from accel.formats.chunked import (
    DEFAULT_BACKEND,
    BlobReader,
    BuildResult,
    BytesBlob,
    FileBlob,
    VerifyResult,
    libdeflate_available,
)
from accel.formats.estargz.builder import (
    DEFAULT_CHUNK_SIZE,
    MEDIA_TYPE,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    BuildOptions,
    TocWriter,
    build,
    build_layout,
)
from accel.formats.estargz.footer import FOOTER_SIZE, encode_footer, parse_footer
from accel.formats.estargz.reader import Blob, is_estargz, open_blob, read_file, verify
from accel.formats.estargz.toc import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_NAME,
    TOCEntry,
    decode_toc,
    encode_toc,
)

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_CHUNK_SIZE",
    "FOOTER_SIZE",
    "MEDIA_TYPE",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TOC_DIGEST_ANNOTATION",
    "TOC_NAME",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "Blob",
    "BlobReader",
    "BuildOptions",
    "BuildResult",
    "BytesBlob",
    "FileBlob",
    "TOCEntry",
    "TocWriter",
    "VerifyResult",
    "build",
    "build_layout",
    "decode_toc",
    "encode_footer",
    "encode_toc",
    "is_estargz",
    "libdeflate_available",
    "open_blob",
    "parse_footer",
    "read_file",
    "verify",
]
