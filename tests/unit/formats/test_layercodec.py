"""The layer codec's streams on bytes: every way of reading gives the same tar, damage is reported after
the bytes that could be decompressed."""

from __future__ import annotations

import gzip
import io
import os

import pytest
import zstandard

from accel.errors import FormatError
from accel.formats.layercodec import decompressed

PAYLOAD = os.urandom(300_000) + bytes(2_000_000) + b"tail" * 50_000  # incompressible, then very compressible
MEMBERS = gzip.compress(PAYLOAD[:1_000_000]) + gzip.compress(PAYLOAD[1_000_000:])


def _read_all(stream: io.RawIOBase | io.BufferedIOBase, size: int) -> bytes:
    parts = []
    while piece := stream.read(size):
        assert len(piece) <= size
        parts.append(piece)
    return b"".join(parts)


def _readinto_all(stream: io.RawIOBase, size: int) -> bytes:
    buf, out = bytearray(size), bytearray()
    while n := stream.readinto(buf):
        out += buf[:n]
    return bytes(out)


@pytest.mark.parametrize("size", [1, 4096, 1 << 20, 3 << 20])
def test_gzip_members_read_and_readinto_agree(size: int) -> None:
    if size == 1:
        small = gzip.compress(b"abc") + gzip.compress(b"de")
        assert _read_all(decompressed(io.BytesIO(small)), 1) == b"abcde"
        return
    assert _read_all(decompressed(io.BytesIO(MEMBERS)), size) == PAYLOAD
    assert _readinto_all(decompressed(io.BytesIO(MEMBERS)), size) == PAYLOAD


def test_read_without_a_size_returns_everything() -> None:
    assert decompressed(io.BytesIO(MEMBERS)).read() == PAYLOAD
    assert decompressed(io.BytesIO(MEMBERS)).read(0) == b""


def test_zero_padding_after_the_last_member_is_tolerated() -> None:
    assert decompressed(io.BytesIO(MEMBERS + bytes(5000))).read() == PAYLOAD


def test_a_truncated_member_hands_out_what_it_holds_then_fails() -> None:
    stream = decompressed(io.BytesIO(MEMBERS[: len(MEMBERS) - 100]))
    got = bytearray()
    with pytest.raises(FormatError, match="truncated"):
        while piece := stream.read(1 << 16):
            got += piece
    assert len(got) > 1_000_000 and PAYLOAD.startswith(bytes(got))


def test_a_corrupt_member_fails_with_a_format_error() -> None:
    broken = bytearray(MEMBERS)
    broken[200:260] = b"\xff" * 60  # inside the first member's deflate data
    with pytest.raises(FormatError, match="corrupt"):
        decompressed(io.BytesIO(bytes(broken))).read()


def test_zstd_frames_read_and_readinto_agree() -> None:
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    frames = compressor.compress(PAYLOAD[:500_000]) + compressor.compress(PAYLOAD[500_000:])
    assert _read_all(decompressed(io.BytesIO(frames)), 1 << 20) == PAYLOAD
    assert _readinto_all(decompressed(io.BytesIO(frames)), 1 << 16) == PAYLOAD
    broken = bytearray(frames)
    broken[1000] ^= 0xFF  # the first frame's content no longer matches its checksum
    with pytest.raises(FormatError, match="zstd"):
        decompressed(io.BytesIO(bytes(broken))).read()
