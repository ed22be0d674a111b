"""An independent reader of Nydus OCI-ref (zran) blobs, for tests: decodes the ci v2 array and the zran
context table straight from the bytes (its own struct layouts, not the project's codecs) and inflates a
context the way nydusd's ``ZranDecoder::uncompress`` does (``utils/src/compress/zlib_random.rs``), through
the system zlib: raw inflate primed with the context's bits and byte, the dictionary set, exactly
``out_len`` bytes expected, and at the end of a gzip member the 8-byte trailer skipped and the next
header parsed. Any deviation nydusd would reject raises ``AssertionError``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
from collections.abc import Callable
from dataclasses import dataclass

_Z_OK, _Z_STREAM_END, _Z_BLOCK = 0, 1, 5


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


_libz = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
_libz.zlibVersion.restype = ctypes.c_char_p
_VERSION = _libz.zlibVersion()


@dataclass(frozen=True)
class Chunk:
    u_off: int
    u_size: int
    c_off: int
    c_size: int
    flags: int
    zran_index: int
    zran_offset: int


@dataclass(frozen=True)
class Context:
    in_offset: int
    out_offset: int
    dict_offset: int
    in_len: int
    out_len: int
    dict_size: int
    ctx_byte: int
    ctx_bits: int


@dataclass(frozen=True)
class ZranMeta:
    chunks: list[Chunk]
    contexts: list[Context]
    dicts: bytes


def parse_meta(blob_meta: bytes) -> ZranMeta:
    """``image/<hex>.blob.meta`` (uncompressed ci data padded to 4 KiB, then the 4 KiB header)."""
    header = blob_meta[-4096:]
    magic, features, _ci_comp, entries = struct.unpack_from("<IIII", header, 0)
    _ci_offset, _ci_csize, ci_usize, zran_off, zran_size = struct.unpack_from("<QQQQQ", header, 16)
    (zran_count,) = struct.unpack_from("<I", header, 56)
    assert magic == 0xB10BB10B and struct.unpack_from("<I", header, 4092)[0] == 0xB10BB10B
    assert features & 0x8 and features & 0x4, f"not a zran ci v2 blob: features {features:#x}"
    ci = blob_meta[:ci_usize]
    assert zran_off == entries * 24 and zran_off + zran_size == ci_usize
    chunks = []
    for i in range(entries):
        uncomp, comp, data = struct.unpack_from("<QQQ", ci, i * 24)
        chunks.append(
            Chunk(
                u_off=(uncomp & 0xFFFFFFFF) << 12,
                u_size=((uncomp >> 32) & 0xFFFFFF) + 1,
                c_off=comp & 0xFF_FFFF_FFFF,
                c_size=comp >> 40,
                flags=uncomp >> 56,
                zran_index=data >> 32,
                zran_offset=data & 0xFFFFFFFF,
            )
        )
    table = ci[zran_off:]
    contexts = [Context(*struct.unpack_from("<QQQIIIBB", table, i * 40)) for i in range(zran_count)]
    return ZranMeta(chunks, contexts, table[40 * zran_count :])


def inflate_context(ctx: Context, dict_area: bytes, compressed: bytes) -> bytes:
    """nydusd's decode of one context from exactly its ``in_len`` compressed bytes."""
    assert len(compressed) == ctx.in_len, "input does not match the context's in_len"
    strm = _ZStream()
    ref = ctypes.byref(strm)
    assert _libz.inflateInit2_(ref, -15, _VERSION, ctypes.sizeof(strm)) == _Z_OK
    try:
        if ctx.ctx_bits:
            bits = ctx.ctx_bits & 7
            assert _libz.inflatePrime(ref, bits, ctx.ctx_byte >> (8 - bits)) == _Z_OK
        window = dict_area[ctx.dict_offset : ctx.dict_offset + ctx.dict_size]
        assert _libz.inflateSetDictionary(ref, window, len(window)) == _Z_OK
        inp = ctypes.create_string_buffer(compressed, len(compressed))
        out = ctypes.create_string_buffer(ctx.out_len)
        strm.next_in = ctypes.addressof(inp)
        strm.avail_in = len(compressed)
        left = ctx.out_len
        while True:
            strm.next_out = ctypes.addressof(out) + (ctx.out_len - left)
            strm.avail_out = left
            got = strm.avail_out
            ret = _libz.inflate(ref, 0)
            left -= got - strm.avail_out
            if ret == _Z_OK:
                assert left == 0, f"context inflates to {ctx.out_len - left} bytes, not {ctx.out_len}"
                return out.raw
            assert ret == _Z_STREAM_END, f"inflate failed ({ret})"
            # nydusd: skip the member's trailer, parse the next member's header, go on raw.
            assert strm.avail_in >= 8, "the input does not have a complete gzip trailer"
            consumed = len(compressed) - strm.avail_in + 8
            strm.next_in = ctypes.addressof(inp) + consumed
            strm.avail_in = len(compressed) - consumed
            assert _libz.inflateReset2(ref, 31) == _Z_OK
            discard = ctypes.create_string_buffer(1 << 15)
            while True:
                strm.next_out = ctypes.addressof(discard)
                strm.avail_out = 1 << 15
                ret = _libz.inflate(ref, _Z_BLOCK)
                if ret == _Z_OK and not strm.data_type & 0x80:
                    continue
                assert ret == _Z_OK, f"failed to handle the next gzip member ({ret})"
                break
            assert _libz.inflateReset2(ref, -15) == _Z_OK
    finally:
        _libz.inflateEnd(ref)


def read_chunk(meta: ZranMeta, index: int, read_at: Callable[[int, int], bytes]) -> bytes:
    """Chunk ``index`` through its context, the compressed range fetched with ``read_at(offset, size)``."""
    chunk = meta.chunks[index]
    assert chunk.flags & 0x2, "not a zran chunk"
    ctx = meta.contexts[chunk.zran_index]
    assert ctx.out_len <= 16 << 20, "nydusd refuses contexts bigger than its largest chunk"
    data = inflate_context(ctx, meta.dicts, read_at(ctx.in_offset, ctx.in_len))
    end = chunk.zran_offset + chunk.u_size
    assert end <= len(data), "chunk beyond its context's output"
    return data[chunk.zran_offset : end]
