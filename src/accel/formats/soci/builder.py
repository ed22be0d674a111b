"""Build a zTOC for a gzip or uncompressed tar layer in one streaming pass."""

from __future__ import annotations

from accel.errors import FormatError
from accel.formats.soci.scan import GzipScanner, TarScanner
from accel.formats.soci.toc import FileMetadata, metadata_from_entry
from accel.formats.soci.zinfo import encode_tar_zinfo, tar_max_span_id
from accel.formats.soci.ztoc import GZIP, UNCOMPRESSED, ZTOC_VERSION, Ztoc
from accel.formats.streams import ByteSource
from accel.formats.tar import TarReader

DEFAULT_SPAN_SIZE = 1 << 22
DEFAULT_MIN_LAYER_SIZE = 10 << 20
DEFAULT_BUILD_TOOL_IDENTIFIER = "acceleration-service"


def build_ztoc(
    stream: ByteSource,
    *,
    span_size: int = DEFAULT_SPAN_SIZE,
    compression: str = GZIP,
    build_tool_identifier: str = DEFAULT_BUILD_TOOL_IDENTIFIER,
) -> Ztoc:
    """The zTOC soci's ``ztoc.BuildZtoc`` would produce for this layer blob (read once, never held whole).

    ``compression`` is ``"gzip"`` or ``"uncompressed"``. Raises FormatError naming the entry for tar types
    soci refuses (PAX global headers, GNU sparse, ...) and for corrupt or truncated layers.
    """
    if compression == GZIP:
        gz = GzipScanner(stream, span_size)
        toc, tar_size = _read_toc(gz)
        gz.drain()
        return Ztoc(
            version=ZTOC_VERSION,
            build_tool_identifier=build_tool_identifier,
            compressed_archive_size=gz.compressed_size,
            uncompressed_archive_size=tar_size,
            toc=toc,
            compression_algorithm=GZIP,
            max_span_id=len(gz.points) - 1,
            span_digests=gz.span_digests,
            checkpoints=gz.take_blob(),
        )
    if compression == UNCOMPRESSED:
        raw = TarScanner(stream, span_size)
        toc, tar_size = _read_toc(raw)
        raw.drain()
        return Ztoc(
            version=ZTOC_VERSION,
            build_tool_identifier=build_tool_identifier,
            compressed_archive_size=raw.size,
            uncompressed_archive_size=tar_size,
            toc=toc,
            compression_algorithm=UNCOMPRESSED,
            max_span_id=tar_max_span_id(span_size, raw.size),
            span_digests=raw.span_digests,
            checkpoints=encode_tar_zinfo(span_size, raw.size),
        )
    raise FormatError(f"SOCI cannot index {compression!r} layers (only gzip and uncompressed tar)")


def _read_toc(stream: GzipScanner | TarScanner) -> tuple[list[FileMetadata], int]:
    reader = TarReader(stream)
    toc = [metadata_from_entry(entry) for entry in reader]
    return toc, reader.eof_offset
