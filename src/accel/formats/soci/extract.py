"""Random access into a gzip layer through zTOC checkpoints, as the snapshotter does (soci's
``extract_data_from_buffer``): raw inflate primed with the checkpoint's partial byte and its 32 KiB window."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from accel.errors import FormatError
from accel.formats.soci.zinfo import Checkpoint, decode_gzip_zinfo
from accel.formats.soci.ztoc import GZIP, Ztoc
from accel.formats.tar import clean_path
from accel.formats.zran import inflate_from


def inflate_at(cp: Checkpoint, compressed: Iterable[bytes]) -> Iterator[bytes]:
    """Uncompressed output from ``cp.uncompressed`` on; ``compressed`` yields bytes from ``cp.span_start``."""
    try:
        yield from inflate_from(compressed, window=cp.window, bits=cp.bits)
    except FormatError as exc:
        raise FormatError(f"checkpoint at {cp.compressed}: {exc.reason}") from None


def _read_from(layer: BinaryIO, start: int) -> Iterator[bytes]:
    layer.seek(start)
    while True:
        chunk = layer.read(1 << 16)
        if not chunk:
            return
        yield chunk


def extract(ztoc: Ztoc, layer: BinaryIO, offset: int, size: int) -> bytes:
    """``size`` uncompressed bytes at ``offset``, read through the zTOC (``layer`` must be seekable)."""
    if size <= 0:
        return b""
    if ztoc.compression_algorithm != GZIP:
        layer.seek(offset)
        return layer.read(size)
    points = decode_gzip_zinfo(ztoc.checkpoints).checkpoints
    cp = points[0]
    for point in points:
        if point.uncompressed > offset:
            break
        cp = point
    skip = offset - cp.uncompressed
    parts: list[bytes] = []
    have = 0
    for piece in inflate_at(cp, _read_from(layer, cp.span_start)):
        if skip >= len(piece):
            skip -= len(piece)
            continue
        piece = piece[skip:]
        skip = 0
        parts.append(piece[: size - have])
        have += len(parts[-1])
        if have >= size:
            break
    data = b"".join(parts)
    if len(data) != size:
        raise FormatError(f"layer ends before uncompressed offset {offset + size}")
    return data


def read_file(ztoc: Ztoc, name: str, layer: BinaryIO) -> bytes:
    """A regular file's content through the zTOC, inflated from the checkpoint before it: the spans
    soci-snapshotter fetches for it, read from ``layer`` (seekable; a ranged reader will do). A hard link
    is followed to its target."""
    by_name = {clean_path(m.name): m for m in ztoc.toc}
    meta = by_name.get(clean_path(name))
    if meta is not None and meta.type == "hardlink":
        meta = by_name.get(clean_path(meta.linkname))
    if meta is None or meta.type != "reg":
        raise FormatError("not a regular file in the zTOC", entry=name)
    return extract(ztoc, layer, meta.uncompressed_offset, meta.uncompressed_size)
