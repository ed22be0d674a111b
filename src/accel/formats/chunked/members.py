"""Ordered, parallel compression of members (gzip members or zstd frames) into an output stream.

The caller appends uncompressed bytes, or ranges of the source tar (a :class:`MappedTar`, so a range is a
view, not a copy); ``start_member`` closes the open member and opens a new one whose first bytes are a
chunk. Members are grouped into batches; a worker hashes each chunk and compresses each member (the
libraries release the GIL). An emitter thread takes the batches in order, hashes the uncompressed stream
(diff_id) and the output, and writes; ``offsets[i]`` is where member ``i`` starts in the output. The
calling thread only parses and queues, so on two cores it is never what the workers wait for.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from accel.formats.chunked.compressors import STRONG_EVERY, STRONG_WINDOW, Buffer, Compressor
from accel.formats.chunked.spool import MappedTar
from accel.formats.streams import ByteSink

_BATCH_BYTES: Final = 2 << 20
# Uncompressed bytes queued or being compressed; bounds memory (a batch larger than this still goes).
_INFLIGHT_BYTES: Final = 16 << 20
# Ranges this close are released as one (the tar headers between files go with them): fewer syscalls.
_SPAN_GAP: Final = 64 << 10


def default_threads() -> int:
    """Compression threads when the caller says 0: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class _Member:
    """A member's parts; ``chunk_len`` >= 0 when it starts with a chunk (hashed on the worker), ``whole``
    a hash that chunk also goes into in stream order (the digest of a file of several chunks)."""

    __slots__ = ("chunk_len", "digest", "parts", "strong", "whole")

    def __init__(
        self, parts: list[Buffer], chunk_len: int, strong: bool, whole: hashlib._Hash | None
    ) -> None:
        self.parts = parts
        self.chunk_len = chunk_len
        self.strong = strong
        self.whole = whole
        self.digest: str | None = None


_Queued = tuple[Future[list[bytes]], list[_Member], int, list[tuple[int, int]]]
"""A submitted batch: its result, members, uncompressed bytes and source ranges."""


def _compress_batch(compressor: Compressor, members: list[_Member]) -> list[bytes]:
    out: list[bytes] = []
    for m in members:
        if m.chunk_len >= 0:
            m.digest = "sha256:" + hashlib.sha256(memoryview(m.parts[0])[: m.chunk_len]).hexdigest()
        out.append(compressor.compress(m.parts, m.strong))
    return out


class MemberWriter:
    """Writes members in order; ``diff`` hashes the uncompressed stream as it is produced."""

    def __init__(
        self,
        dst: ByteSink,
        compressor: Compressor,
        threads: int,
        *,
        start_offset: int = 0,
        source: MappedTar | None = None,
    ) -> None:
        self._dst = dst
        self._compressor = compressor
        self._source = source
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="members") if threads > 1 else None
        self._queue: deque[_Queued] = deque()  # submitted and not yet written, oldest first
        self._inflight_bytes = 0
        self._changed = threading.Condition()  # guards the queue, the byte count, the error and closing
        self._error: BaseException | None = None
        self._closing = False
        self._emitter: threading.Thread | None = None
        self._batch: list[_Member] = []
        self._batch_bytes = 0
        self._batch_spans: list[tuple[int, int]] = []  # source ranges of the batch, released once written
        self._parts: list[Buffer] = []
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
        """Like :meth:`append` for ``length`` bytes at ``offset`` of the source tar."""
        if length > 0:
            self.append(self._range(offset, length))

    def start_member(self, chunk: Buffer) -> int:
        """Close the open member and start a new one beginning with ``chunk``; returns its index."""
        self.close_member()
        self._open, self._member_start = True, self.uncompressed
        self._parts.append(chunk)
        self._chunk_len = len(chunk)
        self.uncompressed += len(chunk)
        return self._members

    def start_member_range(self, offset: int, length: int, whole: hashlib._Hash | None = None) -> int:
        """Like :meth:`start_member` with a chunk of ``length`` bytes at ``offset`` of the source tar;
        the chunk is also fed, in stream order, to ``whole``."""
        self.close_member()  # first: the range belongs to the next batch, not to one this may submit
        member = self.start_member(self._range(offset, length))
        self._whole = whole
        return member

    def _range(self, offset: int, length: int) -> memoryview:
        if self._source is None:
            raise ValueError("MemberWriter has no source tar for ranges")
        spans = self._batch_spans
        if spans and 0 <= offset - spans[-1][1] <= _SPAN_GAP:
            spans[-1] = (spans[-1][0], offset + length)
        else:
            spans.append((offset, offset + length))
        return self._source.slice(offset, length)

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
        batch, size, spans = self._batch, self._batch_bytes, self._batch_spans
        self._batch, self._batch_bytes, self._batch_spans = [], 0, []
        if self._pool is None:
            self._emit(batch, _compress_batch(self._compressor, batch), spans)
            return
        if self._emitter is None:
            self._emitter = threading.Thread(target=self._emit_in_order, name="members-emit", daemon=True)
            self._emitter.start()
        fut = self._pool.submit(_compress_batch, self._compressor, batch)
        with self._changed:
            self._queue.append((fut, batch, size, spans))
            self._inflight_bytes += size
            self._changed.notify_all()
            # Wait only while too much is queued (this bounds memory).
            while self._inflight_bytes > _INFLIGHT_BYTES and self._error is None:
                self._changed.wait()
            self._raise_error()

    def _emit_in_order(self) -> None:
        """The emitter thread: write each batch once compressed, oldest first, until closed."""
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._changed.wait()
                if not self._queue:
                    return
                fut, batch, size, spans = self._queue[0]
            try:
                self._emit(batch, fut.result(), spans)
            except BaseException as exc:  # handed to the calling thread, which raises it
                with self._changed:
                    self._error = exc
                    for queued in self._queue:
                        queued[0].cancel()
                    self._queue.clear()
                    self._changed.notify_all()
                return
            with self._changed:
                self._queue.popleft()
                self._inflight_bytes -= size
                self._changed.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _emit(self, batch: list[_Member], compressed: list[bytes], spans: list[tuple[int, int]]) -> None:
        diff = self.diff
        offset = self.written
        for member, data in zip(batch, compressed, strict=True):
            for part in member.parts:
                diff.update(part)
            if member.whole is not None:
                member.whole.update(memoryview(member.parts[0])[: member.chunk_len])
            self.offsets.append(offset)
            self.chunk_digests.append(member.digest)
            offset += len(data)
            member.parts = []
        self.write_raw(compressed[0] if len(compressed) == 1 else b"".join(compressed))
        if self._source is not None:
            for start, end in spans:
                self._source.release(start, end - start)

    def write_raw(self, data: bytes) -> None:
        """Write bytes that are not a member (a footer, a skippable frame) after what is queued."""
        self._dst.write(data)
        self.blob_hash.update(data)
        self.written += len(data)

    def drain(self) -> None:
        """Close the open member and write everything queued; afterwards offsets/digests are complete."""
        self.close_member()
        self._submit()
        with self._changed:
            while self._queue and self._error is None:
                self._changed.wait()
            self._raise_error()

    def close(self) -> None:
        with self._changed:
            self._closing = True
            for queued in self._queue:
                queued[0].cancel()
            self._changed.notify_all()
        if self._emitter is not None:
            self._emitter.join()
            self._emitter = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
