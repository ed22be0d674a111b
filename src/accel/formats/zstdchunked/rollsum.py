"""File payload chunking exactly as containers/storage's zstd:chunked compressor cuts it.

Go (``pkg/chunked/compressor``) feeds each file's bytes through a bup-style rolling checksum (window 64,
character offset 31, a fresh state per file) and a hole finder:

* a maximal run of at least ``HOLE_THRESHOLD`` zero bytes is a hole: the data before it ends a chunk, the
  run is one ``zeros`` chunk, its bytes go through the rolling sum but are never split points;
* any other byte ends a chunk when, after rolling it in, the low ``bits`` bits of ``s2`` are all ones;
* the rest of the file is the last chunk. There is no minimum or maximum chunk size.

With ``x`` the file bytes (zeros before the start), ``s2`` after byte ``p`` is
``64*63*31 + sum(a * x[p+1-a] for a in 1..64)`` (the offsets and the dropped bytes cancel out), so whole-array
operations on a block give every position's ``s2`` at once, modulo ``2**bits``. numpy does the arithmetic;
only the few split points and holes are walked in Python.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from accel.errors import FormatError

ROLLSUM_BITS: Final = 16
HOLE_THRESHOLD: Final = 1024
WINDOW: Final = 64
CHAR_OFFSET: Final = 31
S2_INIT: Final = WINDOW * (WINDOW - 1) * CHAR_OFFSET
# s2 stays below 2**20 (64*63*31 + 255*2080), so no more bits can ever be all ones.
MAX_BITS: Final = 20
_BLOCK: Final = 256 << 10  # buffers stay in the CPU caches
_SMALL: Final = 4 << 10
_GROUP_BYTES: Final = 1 << 20
_GROUP_FILES: Final = 256
_AHEAD: Final = 4
_ZERO_RUN: Final = bytes(HOLE_THRESHOLD)
_NON_ZERO: Final = re.compile(rb"[^\x00]")

Piece = tuple[int, int, bool]
"""(start, end, is a ``zeros`` chunk), offsets into the file's payload."""

Reader = Callable[[int, int], bytes]
"""``read(offset, n)`` returns exactly ``n`` bytes of the payload from ``offset``."""


def split_target(bits: int) -> int:
    """The value of the weighted window sum (mod ``2**bits``) at which Go splits."""
    mask = (1 << bits) - 1
    return (mask - S2_INIT) & mask


class SplitFinder:
    """Split candidates of a block given the 64 bytes before it; buffers are reused between blocks."""

    def __init__(self, bits: int = ROLLSUM_BITS, block: int = _BLOCK) -> None:
        if not 1 <= bits <= MAX_BITS:
            raise FormatError(f"rolling checksum bits must be within 1..{MAX_BITS}, got {bits}")
        if block < HOLE_THRESHOLD:
            raise ValueError(f"block must be at least {HOLE_THRESHOLD} bytes")
        self.bits = bits
        self.block = block
        self._mask = (1 << bits) - 1
        self._target = split_target(bits)
        # Small blocks: exact sums, modulo 2**16 (or 2**32) in the lanes, from cumulative sums.
        wide = np.uint16 if bits <= 16 else np.uint32
        self._small = [np.zeros(min(block, _SMALL) + WINDOW, wide) for _ in range(4)]
        # Large blocks: sums modulo 256 in byte lanes (half the memory traffic) pick candidates, which are
        # then checked exactly.
        self._large = [np.zeros(block + WINDOW, np.uint8) for _ in range(5)]
        self._windows = sliding_window_view(self._large[0], WINDOW)  # row j: y[j .. j+63]
        self._hit = np.empty(block, np.bool_)
        self._weights = np.arange(WINDOW, 0, -1, dtype=np.float32)  # oldest byte first

    def find(self, history: bytes, data: bytes | memoryview) -> npt.NDArray[np.intp]:
        """Offsets ``i`` into ``data`` whose byte, rolled in, makes a split (holes are not excluded)."""
        n = len(data)
        if n > self.block:
            raise ValueError("block larger than the finder's buffers")
        if n == 0:
            return np.empty(0, np.intp)
        small = n <= _SMALL
        y = (self._small if small else self._large)[0][: n + WINDOW]
        lead = WINDOW - len(history)
        y[:lead] = 0
        y[lead:WINDOW] = np.frombuffer(history, np.uint8)
        y[WINDOW:] = np.frombuffer(data, np.uint8)
        hit = self._hit[:n]
        if small:
            sums = self._sums_small(y, n)
            np.bitwise_and(sums, self._mask, out=sums)
            np.equal(sums, self._target, out=hit)
            return np.flatnonzero(hit)
        sums = self._sums_large(y, n)
        if self.bits < 8:
            np.bitwise_and(sums, self._mask, out=sums)
        np.equal(sums, self._target & 0xFF, out=hit)
        candidates = np.flatnonzero(hit)
        if self.bits <= 8 or not len(candidates):
            return candidates
        # Byte i's window is y[i+1 .. i+64] (y starts with the 64 bytes of history). The sums stay below
        # 2**24, so float32 (a BLAS product) is exact.
        windows = self._windows[candidates + 1]
        exact = (windows.astype(np.float32) @ self._weights).astype(np.int64)
        found: npt.NDArray[np.intp] = candidates[(exact & self._mask) == self._target]
        return found

    def _sums_small(self, y: npt.NDArray[Any], n: int) -> npt.NDArray[Any]:
        # With P the running sum of y and R that of P: W(i) = R[i+64] - R[i] - 64*P[i]. Few operations,
        # but cumulative sums run one element at a time: the better choice for small blocks only.
        p = self._small[1][: n + WINDOW]
        np.cumsum(y, out=p)
        r = self._small[2][: n + WINDOW]
        np.cumsum(p, out=r)
        w = self._small[3][:n]
        np.subtract(r[WINDOW:], r[:n], out=w)
        head = p[:n]
        np.multiply(head, WINDOW, out=head)
        np.subtract(w, head, out=w)
        return w

    def _sums_large(self, y: npt.NDArray[Any], n: int) -> npt.NDArray[Any]:
        # Window weights 1 (newest) .. 64 (oldest), built by doubling: with W_k the weighted and B_k the
        # plain sum of the last k bytes, W_2k(i) = W_k(i) + W_k(i-k) + k*B_k(i-k) and
        # B_2k(i) = B_k(i) + B_k(i-k). Six levels of whole-array operations run about twice as fast as the
        # two cumulative sums. Each W_k(i) is exact for i >= k - 1; the block's bytes sit at i >= 64.
        size = n + WINDOW
        w, b, spare, tmp = (buf[:size] for buf in self._large[1:])  # y (buffer 0) is kept for find
        # W_1 = B_1 = y: level one reads y directly.
        np.add(y[:-1], y[:-1], out=w[1:])
        np.add(w[1:], y[1:], out=w[1:])
        np.add(y[1:], y[:-1], out=b[1:])
        for k in (2, 4, 8, 16, 32):
            np.multiply(b[: size - k], k, out=tmp[k:])  # faster than a shift in numpy
            np.add(tmp[k:], w[: size - k], out=tmp[k:])
            np.add(w[k:], tmp[k:], out=spare[k:])
            w, spare = spare, w
            if k < WINDOW // 2:
                np.add(b[k:], b[: size - k], out=tmp[k:])
                b, tmp = tmp, b
        return w[WINDOW:]


def _holes(data: bytes) -> list[tuple[int, int]]:
    """Maximal zero runs of at least HOLE_THRESHOLD bytes in ``data`` (a run may end at its end)."""
    out: list[tuple[int, int]] = []
    pos = 0
    while (run := data.find(_ZERO_RUN, pos)) >= 0:
        match = _NON_ZERO.search(data, run + HOLE_THRESHOLD)
        end = match.start() if match else len(data)
        out.append((run, end))
        if match is None:
            break
        pos = end
    return out


def _end_of_zeros(read: Reader, pos: int, size: int, block: int) -> int:
    """The first non-zero offset at or after ``pos`` (``size`` if none)."""
    while pos < size:
        data = read(pos, min(block, size - pos))
        match = _NON_ZERO.search(data)
        if match is not None:
            return pos + match.start()
        pos += len(data)
    return size


def chunk_payload(read: Reader, size: int, finder: SplitFinder | None = None) -> Iterator[Piece]:
    """The chunks of a ``size``-byte payload, in order, covering it exactly."""
    finder = finder or SplitFinder()
    block = finder.block
    start = 0  # of the chunk being accumulated
    pos = 0  # next byte to scan; the bytes before it are decided
    while pos < size:
        data = read(pos, min(block, size - pos))
        if len(data) != min(block, size - pos):
            raise FormatError(f"short read of the payload at {pos}")
        end = pos + len(data)
        at_eof = end == size
        holes = _holes(data)
        stop = len(data)  # scan [0, stop) now; the rest waits for the next block
        next_pos = end
        if holes and holes[-1][1] == len(data) and not at_eof:
            # A hole running into the next block: find where it ends.
            next_pos = _end_of_zeros(read, end, size, block)
        elif not at_eof and data[-1] == 0:
            # A short zero run at the end may still grow into a hole: rescan it with the next block.
            tail = data[-HOLE_THRESHOLD:]
            stop = len(data) - (len(tail) - len(tail.rstrip(b"\0")))
            next_pos = pos + stop
        history = read(max(0, pos - WINDOW), min(WINDOW, pos))
        view = memoryview(data)[:stop]
        candidates: list[int] = finder.find(history, view).tolist()
        c = 0
        for hs, he in holes:
            while c < len(candidates) and candidates[c] < hs:
                cut = pos + candidates[c] + 1
                yield (start, cut, False)
                start = cut
                c += 1
            while c < len(candidates) and candidates[c] < he:
                c += 1
            if pos + hs > start:
                yield (start, pos + hs, False)
            hole_end = next_pos if he == len(data) else pos + he
            yield (pos + hs, hole_end, True)
            start = hole_end
        for i in candidates[c:]:
            cut = pos + i + 1
            yield (start, cut, False)
            start = cut
        pos = next_pos
    if start < size:
        yield (start, size, False)


def split_payload(data: bytes, bits: int = ROLLSUM_BITS) -> list[Piece]:
    """The chunks of an in-memory payload."""
    return list(chunk_payload(lambda off, n: data[off : off + n], len(data), SplitFinder(bits)))


def _groups(payloads: Iterable[tuple[Reader, int]]) -> Iterator[list[tuple[Reader, int]]]:
    group: list[tuple[Reader, int]] = []
    size = 0
    for item in payloads:
        group.append(item)
        size += item[1]
        if size >= _GROUP_BYTES or len(group) >= _GROUP_FILES:
            yield group
            group, size = [], 0
    if group:
        yield group


def chunk_payloads(
    payloads: Iterable[tuple[Reader, int]], finder: SplitFinder | None = None
) -> Generator[list[Piece], None, None]:
    """The chunks of each ``(read, size)`` payload, in order, computed a few MiB ahead on a background
    thread (numpy releases the GIL, so scanning overlaps the caller's work). Close it when stopping early."""
    scanner = finder or SplitFinder()

    def scan(group: list[tuple[Reader, int]]) -> list[list[Piece]]:
        return [list(chunk_payload(read, size, scanner)) for read, size in group]

    pool = ThreadPoolExecutor(1, thread_name_prefix="rollsum")
    pending: deque[Future[list[list[Piece]]]] = deque()
    try:
        for group in _groups(payloads):
            pending.append(pool.submit(scan, group))
            if len(pending) > _AHEAD:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
