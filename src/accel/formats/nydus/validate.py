"""Cross-checks between a bootstrap and its blobs: every chunk lies inside its blob; each blob's ``blob.meta``
header agrees with its blob-table entry; every chunk-table entry names a chunk of that blob with the same
offsets, sizes, compression flag and digest (a batched chunk: the same uncompressed range and digest)."""

from __future__ import annotations

from collections.abc import Mapping

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.batch import is_batched
from accel.formats.nydus.blob import BlobFile, read_blob, verify_chunk_digests
from accel.formats.nydus.reader import Bootstrap, read_bootstrap


def validate(bootstrap: bytes | Bootstrap, blobs: Mapping[str, bytes | BlobFile] | None = None) -> Bootstrap:
    """Decode and check a bootstrap; with ``blobs`` (blob id -> blob bytes) check the data blobs as well.

    Blob-table entries whose blob is not in ``blobs`` are checked on the bootstrap side only.
    """
    bs = bootstrap if isinstance(bootstrap, Bootstrap) else read_bootstrap(bootstrap)
    for path, nid in bs.entries:
        rec = bs.inodes[nid]
        for i, addr in enumerate(rec.chunks):
            blob = bs.blobs[addr.blob_index]
            if addr.blkaddr * c.BLOCK_SIZE >= blob.uncompressed_size:
                raise FormatError(f"chunk {i} lies beyond the blob", entry=path.decode("utf-8", "replace"))
    if not blobs:
        return bs
    for index, entry in enumerate(bs.blobs):
        raw = blobs.get(entry.blob_id)
        if raw is None:
            continue
        what = f"blob {entry.blob_id}"
        blob_file = raw if isinstance(raw, BlobFile) else read_blob(raw)
        header = blob_file.meta_header
        if header is None:
            raise FormatError("blob has no blob.meta", entry=what)
        pairs = (
            ("ci_compressor", header.ci_compressor, entry.ci_compressor),
            ("ci_offset", header.ci_offset, entry.ci_offset),
            ("ci_compressed_size", header.ci_compressed_size, entry.ci_compressed_size),
            ("ci_uncompressed_size", header.ci_uncompressed_size, entry.ci_uncompressed_size),
            ("ci_entries", header.ci_entries, entry.chunk_count),
        )
        for name, got, want in pairs:
            if got != want:
                raise FormatError(f"blob.meta {name} {got} != blob table {want}", entry=what)
        if blob_file.uncompressed_size > entry.uncompressed_size:
            raise FormatError("chunks extend past the blob's uncompressed size", entry=what)
        compressor = c.COMPRESSORS[entry.compression_algo]
        digester = c.DIGESTERS[entry.digest_algo]
        digests = verify_chunk_digests(blob_file, compressor, digester)
        for ch in bs.chunk_table:
            if ch.blob_index != index:
                continue
            if ch.index >= len(blob_file.chunks):
                raise FormatError(f"chunk table names ci {ch.index} of {len(blob_file.chunks)}", entry=what)
            ci = blob_file.chunks[ch.index]
            same = (
                ci.uncompressed_offset == ch.uncompressed_offset
                and ci.uncompressed_size == ch.uncompressed_size
                and digests[ch.index] == ch.digest
            )
            if is_batched(ci):
                # nydus leaves a batched chunk's compressed fields in the chunk table unset.
                same = same and ch.compressed_offset == ch.compressed_size == 0
                same = same and not ch.flags & c.CHUNK_COMPRESSED
            else:
                same = (
                    same
                    and ci.compressed_offset == ch.compressed_offset
                    and ci.compressed_size == ch.compressed_size
                    and ci.compressed == bool(ch.flags & c.CHUNK_COMPRESSED)
                )
            if not same:
                raise FormatError(f"chunk table entry for ci {ch.index} disagrees with the blob", entry=what)
    return bs
