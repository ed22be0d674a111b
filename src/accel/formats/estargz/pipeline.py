"""Ordered, parallel compression of members (gzip members or zstd frames) into an output stream.

The caller appends uncompressed bytes, or ranges of a source file (``source_fd``) that a worker reads
itself; ``start_member`` closes the open member and opens a new one whose first bytes are a chunk. Members
are grouped into batches; a worker reads the ranges of a batch into one buffer, hashes each chunk and
compresses each member (the libraries release the GIL). The calling thread only queues work and, in
order, hashes the uncompressed stream (diff_id) and writes the results; ``offsets[i]`` is where member
``i`` starts in the output.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Final

from accel.errors import FormatError
from accel.formats.estargz.compress import STRONG_EVERY, STRONG_WINDOW, Buffer, Compressor

_BATCH_BYTES: Final = 2 << 20
# Uncompressed bytes queued or being compressed; bounds memory (a batch larger than this still goes).
_INFLIGHT_BYTES: Final = 16 << 20


class Range:
    """``length`` bytes at ``offset`` of the source file, read by the worker."""

    __slots__ = ("length", "offset")

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length


_Part = Buffer | Range


class _Member:
    """A member's parts; ``chunk_len`` >= 0 when it starts with a chunk (hashed on the worker), ``whole``
    a hash that chunk also goes into in stream order (the digest of a file of several chunks)."""

    __slots__ = ("chunk", "chunk_len", "digest", "parts", "span", "strong", "whole")

    def __init__(self, parts: list[_Part], chunk_len: int, strong: bool, whole: hashlib._Hash | None) -> None:
        self.parts = parts
        self.chunk_len = chunk_len
        self.strong = strong
        self.whole = whole
        self.digest: str | None = None
        self.chunk: Buffer | None = None
        self.span = (0, 0)  # where the member is in its batch's buffer, when contiguous


# (every part in stream order, materialised; the compressed members)
_Result = tuple[list[Buffer], list[bytes]]


def _fill(fd: int, view: memoryview, part: _Part) -> None:
    if not isinstance(part, Range):
        view[:] = part
        return
    got = 0
    while got < part.length:
        n = os.preadv(fd, [view[got:]], part.offset + got)
        if n <= 0:
            raise FormatError(f"layer: short read at {part.offset + got}")
        got += n


def _materialise(fd: int, members: list[_Member], raw: bytearray, contiguous: bool) -> list[Buffer]:
    """Read every :class:`Range` into one buffer (with the other parts too when ``contiguous``: then each
    member becomes a single view); returns the stream's bytes in order."""
    buf = memoryview(raw)
    pos = 0
    stream: list[Buffer] = []
    for m in members:
        start = pos
        parts: list[Buffer] = []
        for part in m.parts:
            if not contiguous and not isinstance(part, Range):
                parts.append(part)
                continue
            n = part.length if isinstance(part, Range) else len(part)
            view = buf[pos : pos + n]
            _fill(fd, view, part)
            parts.append(view)
            pos += n
        if contiguous:
            parts = [buf[start:pos]]
            m.span = (start, pos)
        stream.extend(parts)
        if m.chunk_len >= 0:
            m.chunk = memoryview(parts[0])[: m.chunk_len]
        m.parts = parts  # type: ignore[assignment]
    return stream


def _compress_batch(compressor: Compressor, fd: int, members: list[_Member], raw: bytearray) -> _Result:
    """``raw`` is big enough for the batch's ranges (for all of it with a one-shot compressor)."""
    at = getattr(compressor, "compress_at", None)  # one-shot from an address: contiguous members
    stream = _materialise(fd, members, raw, at is not None)
    out: list[bytes] = []
    pin = (ctypes.c_char * len(raw)).from_buffer(raw) if at is not None and raw else None
    base = ctypes.addressof(pin) if pin is not None else 0
    for m in members:
        if m.chunk is not None:
            m.digest = "sha256:" + hashlib.sha256(m.chunk).hexdigest()
        if at is not None:
            start, end = m.span
            out.append(at(base + start, end - start))
        else:
            out.append(compressor.compress(m.parts, m.strong))  # type: ignore[arg-type]
    del pin
    return stream, out


class MemberWriter:
    """Writes members in order; ``diff`` hashes the uncompressed stream as it is produced."""

    def __init__(
        self,
        dst: BinaryIO,
        compressor: Compressor,
        threads: int,
        *,
        start_offset: int = 0,
        source_fd: int = -1,
    ) -> None:
        self._dst = dst
        self._compressor = compressor
        self._fd = source_fd
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="esgz") if threads > 1 else None
        self._inflight: deque[tuple[Future[_Result], list[_Member], int, bytearray]] = deque()
        self._one_shot = hasattr(compressor, "compress_at")
        self._inflight_bytes = 0
        self._batch: list[_Member] = []
        self._batch_bytes = 0
        self._batch_ranges = 0
        self._parts: list[_Part] = []
        self._chunk_len = -1
        self._whole: hashlib._Hash | None = None
        self._open = False
        self._member_start = 0
        self._mix = compressor.mixes_levels
        self.diff = hashlib.sha256()
        self.uncompressed = 0
        self.written = start_offset
        self.offsets: list[int] = []
        self.chunk_digests: list[str | None] = []
        self.blob_hash = hashlib.sha256()
        self._members = 0

    def append(self, data: Buffer) -> None:
        """Add bytes to the open member (opening one if none is open)."""
        if not data:
            return
        if not self._open:
            self._open, self._member_start = True, self.uncompressed
        self._parts.append(data)
        self.uncompressed += len(data)

    def append_range(self, offset: int, length: int) -> None:
        """Like :meth:`append` for ``length`` bytes at ``offset`` of the source file."""
        if length <= 0:
            return
        if not self._open:
            self._open, self._member_start = True, self.uncompressed
        self._parts.append(self._range(offset, length))
        self.uncompressed += length

    def start_member(self, chunk: Buffer) -> int:
        """Close the open member and start a new one beginning with ``chunk``; returns its index."""
        self.close_member()
        self._open, self._member_start = True, self.uncompressed
        self._parts.append(chunk)
        self._chunk_len = len(chunk)
        self.uncompressed += len(chunk)
        return self._members

    def start_member_range(self, offset: int, length: int, whole: hashlib._Hash | None = None) -> int:
        """Like :meth:`start_member` with a chunk of ``length`` bytes at ``offset`` of the source file;
        the chunk is also fed, in stream order, to ``whole``."""
        self.close_member()
        self._open, self._member_start = True, self.uncompressed
        self._parts.append(self._range(offset, length))
        self._chunk_len, self._whole = length, whole
        self.uncompressed += length
        return self._members

    def _range(self, offset: int, length: int) -> Range:
        if self._fd < 0:
            raise ValueError("MemberWriter has no source file for ranges")
        self._batch_ranges += length
        return Range(offset, length)

    def close_member(self) -> None:
        if not self._open:
            return
        strong = self._mix and (self._member_start // STRONG_WINDOW) % STRONG_EVERY == 0
        self._batch.append(_Member(self._parts, self._chunk_len, strong, self._whole))
        self._batch_bytes += self.uncompressed - self._member_start
        self._parts, self._chunk_len, self._whole, self._open = [], -1, None, False
        self._members += 1
        if self._batch_bytes >= _BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, size, ranges = self._batch, self._batch_bytes, self._batch_ranges
        self._batch, self._batch_bytes, self._batch_ranges = [], 0, 0
        raw = self._buffer(size if self._one_shot else ranges)
        if self._pool is None:
            self._emit(batch, _compress_batch(self._compressor, self._fd, batch, raw), raw)
            return
        fut = self._pool.submit(_compress_batch, self._compressor, self._fd, batch, raw)
        self._inflight.append((fut, batch, size, raw))
        self._inflight_bytes += size
        # Write whatever is finished, then wait only while too much is queued.
        while self._inflight and (self._inflight[0][0].done() or self._inflight_bytes > _INFLIGHT_BYTES):
            self._pop()

    def _pop(self) -> None:
        fut, batch, size, raw = self._inflight.popleft()
        self._inflight_bytes -= size
        self._emit(batch, fut.result(), raw)

    def _buffer(self, size: int) -> bytearray:
        # A fresh buffer per batch. (Re-using buffers saved ~0.3 CPU-s of page faults per 565 MB but gave a
        # different isal blob in 2 runs out of ~40; not understood yet, so not done.)
        return bytearray(size)

    def _emit(self, batch: list[_Member], result: _Result, raw: bytearray) -> None:
        parts, compressed = result
        diff = self.diff
        for part in parts:
            diff.update(part)
        offset = self.written
        for member, data in zip(batch, compressed, strict=True):
            if member.whole is not None and member.chunk is not None:
                member.whole.update(member.chunk)
            self.offsets.append(offset)
            self.chunk_digests.append(member.digest)
            offset += len(data)
        self.write_raw(compressed[0] if len(compressed) == 1 else b"".join(compressed))
        for member in batch:
            member.parts = member.chunk = None  # type: ignore[assignment]

    def write_raw(self, data: bytes) -> None:
        """Write bytes that are not a member (a footer, a skippable frame) after what is queued."""
        self._dst.write(data)
        self.blob_hash.update(data)
        self.written += len(data)

    def drain(self) -> None:
        """Close the open member and write everything queued; afterwards offsets/digests are complete."""
        self.close_member()
        self._submit()
        while self._inflight:
            self._pop()

    def close(self) -> None:
        if self._pool is not None:
            for fut, _, _, _ in self._inflight:
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
