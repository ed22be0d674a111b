"""Inflating from a checkpoint in the middle of a gzip stream (zran.c's ``extract``): raw inflate primed
with the unused bits of the byte before the checkpoint and given the window before it as dictionary."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Iterator

from accel.errors import FormatError
from accel.formats.zran import native

_OUT = 1 << 18
_GZIP_TRAILER = 8


def inflate_from(
    compressed: Iterable[bytes], *, window: bytes, bits: int = 0, partial_byte: int | None = None
) -> Iterator[bytes]:
    """Uncompressed output from a checkpoint on.

    ``compressed`` yields the stream from the checkpoint's first whole byte; when ``bits`` of the byte
    before it are still unused, that byte is ``partial_byte``, or, when ``partial_byte`` is None, the first
    byte ``compressed`` yields (soci's spans start there). Crosses gzip member boundaries: after a raw
    deflate stream ends, its 8-byte trailer is skipped and the next member's header is parsed.
    """
    z = native.Inflater(native.WINDOW_BITS_RAW)
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
                if bits:
                    if partial_byte is None:
                        partial_byte, chunk = chunk[0], chunk[1:]
                    z.prime(bits, partial_byte >> (8 - bits))
                z.set_dictionary(window)
            if skip_trailer:
                cut = min(skip_trailer, len(chunk))
                skip_trailer -= cut
                chunk = chunk[cut:]
            strm.next_in = native.address(chunk)
            strm.avail_in = len(chunk)
            pos = 0
            while strm.avail_in:
                strm.next_out = out_addr
                strm.avail_out = _OUT
                before = strm.avail_in
                ret = z.inflate(native.Z_NO_FLUSH)
                pos += before - strm.avail_in
                made = _OUT - strm.avail_out
                if made:
                    yield ctypes.string_at(out_addr, made)
                if ret == native.Z_STREAM_END:
                    rest = chunk[pos:]
                    if raw_mode:
                        cut = min(_GZIP_TRAILER, len(rest))
                        skip_trailer = _GZIP_TRAILER - cut
                        rest = rest[cut:]
                        raw_mode = False
                    z.reset(native.WINDOW_BITS_AUTO)
                    chunk, pos = rest, 0
                    strm.next_in = native.address(chunk)
                    strm.avail_in = len(chunk)
                elif ret not in (native.Z_OK, native.Z_BUF_ERROR):
                    raise FormatError(f"cannot inflate from the checkpoint: {z.message()}")
                elif ret == native.Z_BUF_ERROR and before == strm.avail_in and not made:
                    break
        if first:
            raise FormatError("no compressed data at the checkpoint")
    finally:
        z.close()
