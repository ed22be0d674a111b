"""Ordered, parallel compression of members (gzip members or zstd frames) into an output stream.

The caller appends uncompressed bytes; ``start_member`` closes the open member and opens a new one whose
first bytes are a chunk (its sha256 is computed on the worker). Members are compressed on a thread pool in
batches and written in order; ``offsets[i]`` is where member ``i`` starts in the output.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from accel.formats.estargz.compress import STRONG_EVERY, STRONG_WINDOW, Buffer, Compressor

_BATCH_BYTES = 1 << 20
# (chunk that starts the member, the bytes after it, compress at the strong level)
_Member = tuple[Buffer | None, list[Buffer], bool]
_Result = list[tuple[bytes, str | None]]


def _compress_batch(compressor: Compressor, batch: list[_Member]) -> _Result:
    out: _Result = []
    for chunk, rest, strong in batch:
        parts: list[Buffer] = [chunk, *rest] if chunk is not None else rest
        digest = "sha256:" + hashlib.sha256(chunk).hexdigest() if chunk is not None else None
        out.append((compressor.compress(parts, strong), digest))
    return out


class MemberWriter:
    """Writes members in order; ``diff`` hashes the uncompressed stream as it is produced."""

    def __init__(self, dst: BinaryIO, compressor: Compressor, threads: int, *, start_offset: int = 0) -> None:
        self._dst = dst
        self._compressor = compressor
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="esgz") if threads > 1 else None
        self._max_inflight = max(2, threads * 3)
        self._inflight: deque[Future[_Result]] = deque()
        self._batch: list[_Member] = []
        self._batch_bytes = 0
        self._chunk: Buffer | None = None
        self._rest: list[Buffer] = []
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
        self._rest.append(data)
        self.diff.update(data)
        self.uncompressed += len(data)

    def start_member(self, chunk: Buffer) -> int:
        """Close the open member and start a new one beginning with ``chunk``; returns its index."""
        self.close_member()
        self._open, self._member_start = True, self.uncompressed
        self._chunk = chunk
        self.diff.update(chunk)
        self.uncompressed += len(chunk)
        return self._members

    def close_member(self) -> None:
        if not self._open:
            return
        strong = self._mix and (self._member_start // STRONG_WINDOW) % STRONG_EVERY == 0
        member: _Member = (self._chunk, self._rest, strong)
        size = (len(self._chunk) if self._chunk is not None else 0) + sum(len(p) for p in self._rest)
        self._chunk, self._rest, self._open = None, [], False
        self._members += 1
        self._batch.append(member)
        self._batch_bytes += size
        if self._batch_bytes >= _BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if self._pool is None:
            self._emit(_compress_batch(self._compressor, batch))
            return
        self._inflight.append(self._pool.submit(_compress_batch, self._compressor, batch))
        while len(self._inflight) > self._max_inflight:
            self._emit(self._inflight.popleft().result())

    def _emit(self, results: _Result) -> None:
        for data, digest in results:
            self.offsets.append(self.written)
            self.chunk_digests.append(digest)
            self.write_raw(data)

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
            self._emit(self._inflight.popleft().result())

    def close(self) -> None:
        if self._pool is not None:
            for fut in self._inflight:
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
