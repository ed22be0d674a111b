"""The vectorised containers/storage chunking against a byte-at-a-time model of the published algorithm."""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.formats.zstdchunked.rollsum import (
    S2_INIT,
    SplitFinder,
    chunk_payload,
    chunk_payloads,
    split_payload,
    split_target,
)
from tests.unit.formats.zstdchunked.rollsum_reference import RollSum, reference_pieces

# 63 bytes 0xff then 0xde: s2 = 64*63*31 + 255*2080 - 33 = 649_407 = 9*65536 + 65_535 (worked out by hand).
TRIGGER = b"\xff" * 63 + b"\xde"


def zero_heavy(size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        run = rnd.choice([1, 5, 63, 64, 65, 500, 1023, 1024, 1025, 3000, 5000])
        out += bytes(run) if rnd.random() < 0.5 else rnd.randbytes(run)
    return bytes(out[:size])


def real_bytes(size: int) -> bytes:
    return Path(sys.executable).resolve().read_bytes()[:size]


INPUTS: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "one": lambda: b"a",
    "random": lambda: random.Random(1).randbytes(200_000),
    "zero-heavy": lambda: zero_heavy(200_000, 2),
    "zero-heavy-2": lambda: zero_heavy(150_000, 3) + bytes(2500),
    "short-zero-tail": lambda: random.Random(4).randbytes(3000) + bytes(1023),
    "hole-only": lambda: bytes(5000),
    "short-zeros-only": lambda: bytes(1023),
    "hole-first": lambda: bytes(1024) + random.Random(5).randbytes(50_000),
    "triggers": lambda: TRIGGER * 40 + b"x" + TRIGGER,
    "trigger-before-hole": lambda: TRIGGER + bytes(1500) + TRIGGER + bytes(10),
    "constant": lambda: b"\x01" * 70_000,
    "real": lambda: real_bytes(150_000),
}


def test_s2_is_the_weighted_window_sum() -> None:
    rnd = random.Random(7)
    data = rnd.randbytes(300) + bytes(100) + rnd.randbytes(50)
    rs = RollSum()
    for p, byte in enumerate(data):
        rs.roll(byte)
        window = sum(a * data[p + 1 - a] for a in range(1, 65) if p + 1 - a >= 0)
        assert rs.s2 == S2_INIT + window


def test_hand_worked_split() -> None:
    assert split_target(16) == (65_535 - S2_INIT) % 65_536
    assert split_payload(TRIGGER + b"abc") == [(0, 64, False), (64, 67, False)]
    assert split_payload(TRIGGER[1:] + b"abc") == [(0, 66, False)]


@pytest.mark.parametrize("bits", [16, 12, 7, 18])
@pytest.mark.parametrize("name", list(INPUTS))
def test_matches_the_byte_at_a_time_model(name: str, bits: int) -> None:
    data = INPUTS[name]()
    want = reference_pieces(data, bits)
    assert split_payload(data, bits) == want
    # Small blocks: split points, holes and short zero runs straddle block boundaries.
    for block in (1024, 1500, 4096):
        finder = SplitFinder(bits, block=block)
        assert list(chunk_payload(lambda off, n: data[off : off + n], len(data), finder)) == want


def test_pieces_cover_the_payload_and_split_often_enough() -> None:
    data = random.Random(9).randbytes(2 << 20)
    pieces = split_payload(data)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    assert 8 <= len(pieces) <= 100  # 32 expected on average for 2 MiB at 64 KiB


def test_holes_spanning_many_blocks() -> None:
    data = b"a" + bytes(10_000) + TRIGGER + bytes(3000)
    finder = SplitFinder(block=1024)
    got = list(chunk_payload(lambda off, n: data[off : off + n], len(data), finder))
    assert got == [(0, 1, False), (1, 10_001, True), (10_001, 10_065, False), (10_065, 13_065, True)]


def test_bad_parameters() -> None:
    with pytest.raises(FormatError):
        SplitFinder(0)
    with pytest.raises(FormatError):
        SplitFinder(21)
    with pytest.raises(ValueError):
        SplitFinder(block=100)
    with pytest.raises(FormatError, match="short read"):
        list(chunk_payload(lambda off, n: b"x", 10))


def test_background_chunking_keeps_order_and_reports_errors() -> None:
    datas = [INPUTS[name]() for name in INPUTS] * 30  # several groups of files

    def reader(data: bytes) -> Callable[[int, int], bytes]:
        return lambda off, n: data[off : off + n]

    got = list(chunk_payloads((reader(d), len(d)) for d in datas if d))
    assert got == [split_payload(d) for d in datas if d]

    def broken(off: int, n: int) -> bytes:
        raise FormatError("payload gone")

    with pytest.raises(FormatError, match="payload gone"):
        list(chunk_payloads([(reader(b"abc"), 3), (broken, 10)]))
