"""eStargz: building lazily-pullable gzip layers and reading/verifying them.

Public API::

    build(src, dst, BuildOptions(...)) -> BuildResult      # layer (tar / tar+gzip / tar+zstd) -> eStargz
    is_estargz(blob) -> bool                                # footer + TOC parse (gzip, legacy, stargz zstd)
    open_blob(blob) -> Blob                                 # footer + TOC
    verify(blob, toc_digest, full=True) -> VerifyResult     # Go VerifyTOC checks + every chunk + full stream

``blob`` is bytes, a binary file (read with pread) or any object with ``size`` and ``read_at(off, n)``.
The driver puts ``BuildResult.annotations`` on the layer descriptor and ``BuildResult.diff_id`` into the
config's ``rootfs.diff_ids``.
"""

from accel.formats.estargz.builder import (
    DEFAULT_CHUNK_SIZE,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    BuildOptions,
    BuildResult,
    build,
)
from accel.formats.estargz.compress import DEFAULT_BACKEND, libdeflate_available
from accel.formats.estargz.footer import FOOTER_SIZE, encode_footer, parse_footer
from accel.formats.estargz.reader import (
    Blob,
    BlobReader,
    BytesBlob,
    FileBlob,
    VerifyResult,
    is_estargz,
    open_blob,
    verify,
)
from accel.formats.estargz.toc import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_NAME,
    TOCEntry,
    decode_toc,
    encode_toc,
)

MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

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
    "VerifyResult",
    "build",
    "decode_toc",
    "encode_footer",
    "encode_toc",
    "is_estargz",
    "libdeflate_available",
    "open_blob",
    "parse_footer",
    "verify",
]
