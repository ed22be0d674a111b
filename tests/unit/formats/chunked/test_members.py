"""The member writer: order, and failures on its worker and emitter threads reaching the caller."""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence

import pytest

from accel.errors import FormatError
from accel.formats.chunked import Buffer, MemberWriter, make_compressor
from tests.support.layers import payload

CHUNK = 700_000  # a few members per batch, several batches in flight


class _FailingCompressor:
    """gzip, except for the member that starts with ``poison``."""

    name = "failing"
    level = 1
    mixes_levels = False

    def __init__(self, poison: bytes) -> None:
        self._inner = make_compressor("zlib-ng", 1)
        self._poison = poison

    def compress(self, parts: Sequence[Buffer], strong: bool = False) -> bytes:
        if bytes(memoryview(parts[0])[: len(self._poison)]) == self._poison:
            raise FormatError("cannot compress this member")
        return self._inner.compress(parts, strong)


class _FullDisk(io.RawIOBase):
    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, b: Buffer) -> int:  # type: ignore[override]
        n = memoryview(b).nbytes
        if n > self.room:
            raise OSError(28, "No space left on device")
        self.room -= n
        return n


def _chunks(count: int) -> list[bytes]:
    return [payload(CHUNK, i) for i in range(count)]


def test_members_come_out_in_order_with_their_offsets_and_digests() -> None:
    out = io.BytesIO()
    writer = MemberWriter(out, make_compressor("zlib-ng", 1), threads=2)
    chunks = _chunks(40)
    try:
        indexes = [writer.start_member(c) for c in chunks]
        writer.drain()
    finally:
        writer.close()
    assert indexes == list(range(40))
    blob = out.getvalue()
    ends = [*writer.offsets[1:], len(blob)]
    for chunk, start, end in zip(chunks, writer.offsets, ends, strict=True):
        assert gzip.decompress(blob[start:end]) == chunk
    assert gzip.decompress(blob) == b"".join(chunks)


def test_a_worker_failure_reaches_the_caller_and_nothing_hangs() -> None:
    chunks = _chunks(40)
    writer = MemberWriter(io.BytesIO(), _FailingCompressor(chunks[25][:64]), threads=2)
    with pytest.raises(FormatError, match="cannot compress"):
        try:
            for chunk in chunks:
                writer.start_member(chunk)
            writer.drain()
        finally:
            writer.close()


def test_a_write_failure_on_the_emitter_reaches_the_caller() -> None:
    writer = MemberWriter(_FullDisk(room=3 << 20), make_compressor("zlib-ng", 1), threads=2)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space left"):
        try:
            for chunk in _chunks(60):
                writer.start_member(chunk)
            writer.drain()
        finally:
            writer.close()
