"""The shared block-boundary inflater: foreground and background (inflating ahead on a thread) give the same
stream and the same boundaries, errors reach the reader, and a reader that stops early stops the thread."""

from __future__ import annotations

import gzip
import io
import random
import threading

import pytest

from accel.errors import FormatError
from accel.formats.zran import WINDOW_SIZE, BlockInflater, inflate_from


class _Recorder(BlockInflater):
    def __init__(self, data: bytes, background: bool) -> None:
        super().__init__(io.BytesIO(data), background=background)
        self.seen: list[tuple[int, int, int, bytes]] = []

    def at_boundary(self, bits: int) -> None:
        self.seen.append((self.compressed_size, self.uncompressed_size, bits, self.window()))


def _payload(size: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randint(3, 12)) for _ in range(300)]
    return b"".join(rnd.choice(words) for _ in range(size // 7))[:size]


DATA = _payload(3_000_000) + bytes(500_000) + random.Random(2).randbytes(400_000)
MEMBERS = gzip.compress(DATA[:1_234_567], 6) + gzip.compress(DATA[1_234_567:], 1)


@pytest.mark.parametrize("reads", ["read", "readinto", "skip"])
def test_background_gives_the_same_stream_and_boundaries(reads: str) -> None:
    results = []
    for background in (False, True):
        z = _Recorder(MEMBERS, background)
        out = bytearray()
        rnd = random.Random(5)
        while True:
            n = rnd.choice([1, 511, 4096, 65536, 1 << 20])
            if reads == "read":
                piece = z.read(n)
            elif reads == "readinto":
                buf = bytearray(n)
                piece = bytes(buf[: z.readinto(buf)])
            else:
                piece = b"\0" * z.skip(n)
            if not piece:
                break
            out += piece
        z.close()
        results.append((bytes(out), z.seen, z.members))
    (fg_out, fg_seen, fg_members), (bg_out, bg_seen, bg_members) = results
    assert len(fg_out) == len(DATA) and (reads == "skip" or fg_out == DATA)
    assert (bg_out, bg_seen, bg_members) == (fg_out, fg_seen, fg_members) and fg_members == 2
    assert len(fg_seen) > 10


def test_every_boundary_restarts_inflating_with_its_window() -> None:
    z = _Recorder(MEMBERS, True)
    z.drain()
    z.close()
    member2 = len(gzip.compress(DATA[:1_234_567], 6))
    for in_offset, out_offset, bits, window in z.seen[1 :: max(1, len(z.seen) // 12)]:
        assert len(window) == WINDOW_SIZE
        start = in_offset - (1 if bits else 0)
        got = b"".join(inflate_from([MEMBERS[start:]], window=window, bits=bits))
        assert got[:100_000] == DATA[out_offset : out_offset + 100_000]
        assert (in_offset < member2) == (out_offset < 1_234_567)


def test_errors_on_the_inflating_thread_reach_the_reader() -> None:
    z = BlockInflater(io.BytesIO(MEMBERS[: len(MEMBERS) // 2]), background=True)
    with pytest.raises(FormatError, match="truncated"):
        z.drain()
    z.close()
    corrupt = bytearray(MEMBERS)
    corrupt[5000:5400] = bytes(400)
    z = BlockInflater(io.BytesIO(bytes(corrupt)), background=True)
    with pytest.raises(FormatError):
        while z.read(1 << 16):
            pass
    z.close()


def test_close_stops_a_thread_that_is_ahead_of_its_reader() -> None:
    big = gzip.compress(bytes(64 << 20), 1)
    z = BlockInflater(io.BytesIO(big), background=True)
    assert z.read(10) == bytes(10)
    before = {t.name for t in threading.enumerate()}
    assert "zran-inflate" in before
    z.close()
    assert "zran-inflate" not in {t.name for t in threading.enumerate()}
    assert not z.done, "stopped before the end of the stream"
