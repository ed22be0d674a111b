"""A straightforward, byte-at-a-time model of containers/storage's zstd:chunked chunking (rolling sum,
hole finder, reader with a 4 KiB buffer and the writer's chunk bookkeeping), written from the published
algorithm to check the vectorised one against. Slow (~1 MB/s): small inputs only."""

from __future__ import annotations

_WINDOW = 64
_CHAR_OFFSET = 31
_U32 = 0xFFFFFFFF


class RollSum:
    def __init__(self) -> None:
        self.s1 = _WINDOW * _CHAR_OFFSET
        self.s2 = _WINDOW * (_WINDOW - 1) * _CHAR_OFFSET
        self.window = [0] * _WINDOW
        self.wofs = 0

    def roll(self, ch: int) -> None:
        drop = self.window[self.wofs]
        self.s1 = (self.s1 + ch - drop) & _U32
        self.s2 = (self.s2 + self.s1 - _WINDOW * (drop + _CHAR_OFFSET)) & _U32
        self.window[self.wofs] = ch
        self.wofs = (self.wofs + 1) % _WINDOW

    def on_split(self, bits: int) -> bool:
        mask = (1 << bits) - 1
        return self.s2 & mask == mask


class _HolesFinder:
    """Returns (hole length, byte): (0, b) for an ordinary byte, (n, 0) for a run of n >= threshold zeros."""

    def __init__(self, data: bytes, threshold: int) -> None:
        self.data = data
        self.pos = 0
        self.threshold = threshold
        self.zeros = 0  # zeros counted but not handed out yet
        self.state = "read"

    def _next(self) -> int | None:
        if self.pos >= len(self.data):
            return None
        self.pos += 1
        return self.data[self.pos - 1]

    def read_byte(self) -> tuple[int, int] | None:
        while True:
            if self.state == "read":
                if self.zeros:
                    self.zeros -= 1
                    return 0, 0
                b = self._next()
                if b is None or b != 0:
                    return None if b is None else (0, b)
                self.zeros = 1
                self.state = "found" if self.zeros == self.threshold else "accumulate"
            elif self.state == "accumulate":
                b = self._next()
                if b is None:
                    self.state = "eof"
                elif b == 0:
                    self.zeros += 1
                    if self.zeros == self.threshold:
                        self.state = "found"
                else:
                    self.pos -= 1
                    self.state = "read"
            elif self.state == "found":
                b = self._next()
                if b is None or b != 0:
                    if b is None:
                        self.state = "eof"
                    else:
                        self.pos -= 1
                        self.state = "read"
                    n, self.zeros = self.zeros, 0
                    return n, 0
                self.zeros += 1
            else:  # eof: hand out what is left
                if self.zeros:
                    self.zeros -= 1
                    return 0, 0
                return None


def reference_pieces(
    data: bytes, bits: int = 16, threshold: int = 1024, buffer: int = 4096
) -> list[tuple[int, int, bool]]:
    """(start, end, zeros) chunks of one file's payload, as the Go writer records them."""
    finder = _HolesFinder(data, threshold)
    rollsum = RollSum()
    pending_hole = 0
    closed = False
    written = 0
    last_chunk = 0
    started = False
    pieces: list[tuple[int, int, bool]] = []
    while True:
        # One reader call: (must split, bytes read, eof, last chunk is zeros).
        zeros_chunk = False
        eof = False
        must_split = False
        read = 0
        if pending_hole:
            read = min(pending_hole, buffer)
            pending_hole -= read
            written += read
            zeros_chunk = True
            must_split = pending_hole == 0
        elif closed:
            eof = True
        else:
            for i in range(buffer):
                got = finder.read_byte()
                if got is None:
                    closed = True
                    read = i
                    eof = i == 0
                    break
                hole, b = got
                if hole:
                    for _ in range(hole):
                        rollsum.roll(0)
                    pending_hole = hole
                    must_split, read = True, i
                    break
                written += 1
                rollsum.roll(b)
                if rollsum.on_split(bits):
                    must_split, read = True, i + 1
                    break
            else:
                read = buffer
        if read:
            started = True
        if (must_split or eof) and started:
            if written - last_chunk > 0:
                pieces.append((last_chunk, written, zeros_chunk))
            last_chunk = written
        if eof:
            return pieces
