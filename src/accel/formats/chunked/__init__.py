"""Chunked-layer writing shared by eStargz and zstd:chunked: one pass over a layer, a compressed member
(gzip member or zstd frame) per chunk, written in order by parallel workers.

Public API::

    SpooledLayer(src, tmpdir=None)      # the plain tar of any layer, parsed once, its bytes kept (spool)
      .entries() / .ready_entries()     #   TarEntry objects as Go's reader reports them
      .mapped() -> MappedTar            #   the tar as zero-copy memory views (.slice, .release)
      .pread(offset, n)
    MemberWriter(dst, compressor, threads, source=mapped)   # ordered, parallel member compression
      .append / .append_range / .start_member / .start_member_range / .close_member
      .write_raw(data) / .drain() / .close()
      .offsets, .chunk_digests, .diff, .blob_hash, .written, .uncompressed
    make_compressor(backend, level) -> Compressor            # "libdeflate", "zlib-ng", "isal", "zstd"
    default_threads() -> int
    BuildResult                         # what a builder returns: digest, diff_id, media_type, annotations...
    BlobReader / BytesBlob / FileBlob / as_blob / BlobStream / VerifyResult   # reading built blobs back

A format adds its own layout on top: which entries go where, the TOC, the footer.
"""

from accel.formats.chunked.blob import BlobReader, BlobStream, BytesBlob, FileBlob, VerifyResult, as_blob
from accel.formats.chunked.compressors import (
    DEFAULT_BACKEND,
    Backend,
    Buffer,
    Compressor,
    libdeflate_available,
    make_compressor,
)
from accel.formats.chunked.members import MemberWriter, default_threads
from accel.formats.chunked.result import BuildResult
from accel.formats.chunked.spool import MappedTar, SpooledLayer

__all__ = [
    "DEFAULT_BACKEND",
    "Backend",
    "BlobReader",
    "BlobStream",
    "Buffer",
    "BuildResult",
    "BytesBlob",
    "Compressor",
    "FileBlob",
    "MappedTar",
    "MemberWriter",
    "SpooledLayer",
    "VerifyResult",
    "as_blob",
    "default_threads",
    "libdeflate_available",
    "make_compressor",
]
