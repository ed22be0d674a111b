"""zstd:chunked as stargz-snapshotter writes it: the eStargz layout with zstd frames instead of gzip
members, no TOC tar entry, and the TOC plus a 40-byte footer in skippable frames."""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Final

from accel.formats.chunked import BuildResult, Compressor, MemberWriter, make_compressor
from accel.formats.estargz import BuildOptions, build_layout
from accel.formats.streams import ByteSink
from accel.formats.zstdchunked.frames import SKIPPABLE_HEADER_SIZE, skippable_frame, stargz_footer

MANIFEST_CHECKSUM_KEY: Final = "io.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION_KEY: Final = "io.containers.zstd-chunked.manifest-position"
MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar+zstd"


def _write_zstd_toc(writer: MemberWriter, compressor: Compressor, toc_json: bytes) -> dict[str, str]:
    compressed = compressor.compress([toc_json])
    toc_offset = writer.written + SKIPPABLE_HEADER_SIZE
    writer.write_raw(skippable_frame(compressed))
    writer.write_raw(skippable_frame(stargz_footer(toc_offset, len(compressed), len(toc_json))))
    return {
        MANIFEST_CHECKSUM_KEY: "sha256:" + hashlib.sha256(compressed).hexdigest(),
        MANIFEST_POSITION_KEY: f"{toc_offset}:{len(compressed)}:{len(toc_json)}:1",
    }


def build_stargz(src: BinaryIO, dst: ByteSink, options: BuildOptions | None = None) -> BuildResult:
    """Convert a layer to stargz-snapshotter's zstd:chunked; ``compression_level`` is the zstd level."""
    opts = options or BuildOptions()
    compressor = make_compressor("zstd", opts.compression_level)
    return build_layout(
        src, dst, opts, compressor=compressor, write_toc=_write_zstd_toc, media_type=MEDIA_TYPE
    )
