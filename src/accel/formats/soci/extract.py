"""Random access into a gzip layer through zTOC checkpoints, as the snapshotter does (soci's
``extract_data_from_buffer``): raw inflate primed with the checkpoint's partial byte and its 32 KiB window."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from accel.errors import FormatError
from accel.formats.soci import _zlib
from accel.formats.soci.zinfo import Checkpoint, decode_gzip_zinfo
from accel.formats.soci.ztoc import GZIP, Ztoc
from accel.formats.tar import clean_path

_OUT = 1 << 18
_GZIP_TRAILER = 8


def inflate_from(cp: Checkpoint, compressed: Iterable[bytes]) -> Iterator[bytes]:
    """Uncompressed output from ``cp.uncompressed`` on, ``compressed`` yields bytes from ``cp.span_start``.

    Crosses gzip member boundaries: after a raw deflate stream ends, its 8-byte trailer is skipped and the
    next member's header is parsed (window bits 47) before inflating on.
    """
    z = _zlib.Inflater(_zlib.WINDOW_BITS_RAW)
    strm = z.strm
    out = ctypes.create_string_buffer(_OUT)
    out_addr = ctypes.addressof(out)
    raw_mode = True
    skip_trailer = 0
    first = True
    try:
        for chunk in compressed:
            if first and chunk:
                first = False
                if cp.bits:
                    z.prime(cp.bits, chunk[0] >> (8 - cp.bits))
                    chunk = chunk[1:]
                z.set_dictionary(cp.window)
            if skip_trailer:
                cut = min(skip_trailer, len(chunk))
                skip_trailer -= cut
                chunk = chunk[cut:]
            strm.next_in = _zlib.address(chunk)
            strm.avail_in = len(chunk)
            pos = 0
            while strm.avail_in:
                strm.next_out = out_addr
                strm.avail_out = _OUT
                before = strm.avail_in
                ret = z.inflate(_zlib.Z_NO_FLUSH)
                pos += before - strm.avail_in
                made = _OUT - strm.avail_out
                if made:
                    yield ctypes.string_at(out_addr, made)
                if ret == _zlib.Z_STREAM_END:
                    rest = chunk[pos:]
                    if raw_mode:
                        cut = min(_GZIP_TRAILER, len(rest))
                        skip_trailer = _GZIP_TRAILER - cut
                        rest = rest[cut:]
                        raw_mode = False
                    z.reset(_zlib.WINDOW_BITS_AUTO)
                    chunk, pos = rest, 0
                    strm.next_in = _zlib.address(chunk)
                    strm.avail_in = len(chunk)
                elif ret not in (_zlib.Z_OK, _zlib.Z_BUF_ERROR):
                    raise FormatError(f"cannot inflate from checkpoint at {cp.compressed}: {z.message()}")
                elif ret == _zlib.Z_BUF_ERROR and before == strm.avail_in and not made:
                    break
        if first:
            raise FormatError(f"no compressed data at checkpoint {cp.compressed}")
    finally:
        z.close()


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
    for piece in inflate_from(cp, _read_from(layer, cp.span_start)):
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
