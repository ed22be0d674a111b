"""Chunk compression and digests as nydus does them (``utils/src/compress/mod.rs``, ``utils/src/digest.rs``):
one zstd frame / raw LZ4 block per chunk."""

from __future__ import annotations

import hashlib
import threading

import blake3
import lz4.block
import zstandard

from accel.errors import FormatError

_local = threading.local()


def _zstd_c() -> zstandard.ZstdCompressor:
    comp: zstandard.ZstdCompressor | None = getattr(_local, "zc", None)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False)
        _local.zc = comp
    return comp


def _zstd_d() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_local, "zd", None)
    if dec is None:
        dec = zstandard.ZstdDecompressor()
        _local.zd = dec
    return dec


def compress(compressor: str, data: bytes | bytearray) -> tuple[bytes | bytearray, bool]:
    """(stored bytes, compressed?) - raw bytes are kept when compression does not shrink them."""
    if compressor == "none" or not data:
        return data, False
    if compressor == "zstd":
        out = _zstd_c().compress(data)
    elif compressor == "lz4_block":
        out = lz4.block.compress(data, mode="default", store_size=False)
    else:
        raise FormatError(f"unsupported compressor {compressor!r}")
    if len(out) >= len(data):
        return data, False
    return out, True


def decompress(compressor: str, data: bytes, size: int) -> bytes:
    """Decompress one chunk (or section) that must expand to exactly ``size`` bytes."""
    try:
        if compressor == "zstd":
            out = _zstd_d().decompress(data, max_output_size=size)
        elif compressor == "lz4_block":
            out = lz4.block.decompress(data, uncompressed_size=size)
        elif compressor == "none":
            out = data
        else:
            raise FormatError(f"unsupported compressor {compressor!r}")
    except (zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
        raise FormatError(f"corrupt {compressor} data: {exc}") from None
    if len(out) != size:
        raise FormatError(f"{compressor} data expands to {len(out)} bytes, expected {size}")
    return bytes(out)


def digest_of(digester: str, data: bytes | bytearray) -> bytes:
    if digester == "blake3":
        return bytes(blake3.blake3(data).digest())
    if digester == "sha256":
        return hashlib.sha256(data).digest()
    raise FormatError(f"unsupported digester {digester!r}")
