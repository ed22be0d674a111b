"""A streaming gzip inflater that stops at every deflate block boundary, for indexers to take checkpoints.

``inflate(Z_BLOCK)`` returns at each block boundary (zlib's zran.c technique); there a subclass's
:meth:`BlockInflater.at_boundary` sees the exact compressed and uncompressed offsets, the pending bits and
the window, and decides whether to keep a checkpoint. The uncompressed stream is handed on through
``read``/``readinto``/``skip`` (what :class:`~accel.formats.tar.TarReader` wants), so a layer is read and
inflated exactly once whatever indexes it. Output goes through a circular buffer that is kept across gzip
members, so a window is "the 32 KiB of output before the boundary" whichever member it falls in.
"""

from __future__ import annotations

import ctypes
import queue
import threading

from accel.errors import FormatError
from accel.formats.streams import ByteSource
from accel.formats.zran import native

WINDOW_SIZE = 1 << 15

# Neither size changes where inflate(Z_BLOCK) stops, and the last 32 KiB before any point are the same in
# any ring of at least 32 KiB, so both are chosen for few calls from Python.
_IN_CHUNK = 1 << 16
_RING = 1 << 18
# Inflating ahead hands output over in batches of about this much, at most this many batches queued.
_BATCH = 1 << 20
_QUEUE_BATCHES = 8
# How far the thread can be ahead: the batch being copied, the queued ones, one being put and one being
# made, each under two batches' worth of steps.
# The reader keeps views of the ring (no copy) for at most this much output it has not taken yet; beyond
# it, older views are copied out.
_BACKLOG = 4 << 20
_AHEAD_RING = 2 * _BATCH * (_QUEUE_BATCHES + 4) + _BACKLOG


class BlockInflater:
    """Inflates a gzip stream (one or more members) on demand, calling :meth:`at_boundary` at every deflate
    block boundary that is not the end of a member; with :attr:`boundaries_from` set ahead, only at the
    first one from there on (an indexer that wants a checkpoint every few megabytes need not stop at each).

    With ``background``, a thread inflates ahead (zlib runs without the GIL) while the caller parses what
    it reads: two cores for one stream. The hooks then run on that thread, before the output that follows
    the boundary is handed over, so a reader that has data beyond an offset sees every boundary before it.
    Call :meth:`close` when done (it stops the thread if the reader gave up early).
    """

    # Subclasses that need every consumed compressed byte (span digests) set this and override consumed().
    observes_input = False

    def __init__(self, source: ByteSource, *, background: bool = False, ring_size: int | None = None) -> None:
        self._src = source
        self._z = native.Inflater(native.WINDOW_BITS_AUTO)
        self._strm = self._z.strm
        self._ring = ring_size or (_AHEAD_RING if background else _RING)
        # Inflating ahead, each step makes at most a batch, so the thread is never more than the queue's
        # worth of batches ahead of its reader; the ring must hold that much (the reader copies from it).
        self._step_out = _BATCH if background else self._ring
        # Inflating ahead, every call back into Python after zlib may wait for the reader's turn with the GIL
        # (up to the switch interval): fewer, bigger reads of input mean fewer calls.
        self._in_chunk = _BATCH if background else _IN_CHUNK
        if background and self._ring < _AHEAD_RING:
            raise ValueError(f"a ring of {self._ring} bytes is too small to inflate ahead")
        self._win = ctypes.create_string_buffer(self._ring)
        self._win_addr = ctypes.addressof(self._win)
        self._ring_view = memoryview(self._win).cast("B")
        self._discard = 0
        self._strm.avail_out = 0
        self._strm.avail_in = 0
        self._chunk = b""
        self._chunk_base = 0
        self._prev_last = 0
        self._pending = b""
        self._totin = 0
        self._totout = 0
        self._out: list[bytes | memoryview] = []
        self._out_len = 0
        # Boundaries before this uncompressed offset are not wanted: inflate straight up to it in big steps
        # (few calls from Python), then stop at every block boundary again. 0: every boundary.
        self.boundaries_from = 0
        self.member_start = 0  # uncompressed offset where the current gzip member began
        self.members = 1
        self.done = False  # the stream has ended (set by the inflating thread)
        self._background = background
        self._queue: queue.Queue[list[tuple[int, int]] | BaseException | None] = queue.Queue(
            maxsize=_QUEUE_BATCHES
        )
        self._batch: list[tuple[int, int]] = []  # (uncompressed offset, size) of output in the ring
        self._batch_len = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._eof = False  # the reader has taken the last batch

    # -- what a subclass sees at a boundary ------------------------------------------------------------

    @property
    def compressed_size(self) -> int:
        """Compressed bytes consumed so far (at a boundary: the offset of the first byte not yet used)."""
        return self._totin

    @property
    def uncompressed_size(self) -> int:
        """Uncompressed bytes produced so far (at a boundary: its uncompressed offset)."""
        return self._totout

    def at_boundary(self, bits: int) -> None:
        """A deflate block boundary; ``bits`` (0-7) of the byte before :attr:`compressed_size` are unused."""

    def consumed(self, data: memoryview) -> None:
        """Compressed bytes inflate has just used (only called when :attr:`observes_input` is set)."""

    def stepped(self) -> None:
        """One call to inflate is done (at a boundary, a full step, or a new gzip member's start)."""

    def finished(self) -> None:
        """The last gzip member has ended."""

    def previous_byte(self) -> int:
        """The compressed byte just before :attr:`compressed_size` (the partly used one at a boundary)."""
        idx = self._totin - 1 - self._chunk_base
        return self._chunk[idx] if idx >= 0 else self._prev_last

    def window(self) -> bytes:
        """The 32 KiB of output before the current position (zeros before any output, as zran.c keeps it)."""
        pos = (self._totout - 1) % self._ring + 1 if self._totout else 0
        if pos >= WINDOW_SIZE:
            return ctypes.string_at(self._win_addr + pos - WINDOW_SIZE, WINDOW_SIZE)
        # Wraps around; before the first wrap the end of the ring is still zeros.
        return ctypes.string_at(self._win_addr + self._ring - (WINDOW_SIZE - pos), WINDOW_SIZE - pos) + (
            ctypes.string_at(self._win_addr, pos)
        )

    # -- inflating -------------------------------------------------------------------------------------

    def _more_input(self) -> bool:
        if not self._pending:
            self._pending = self._src.read(self._in_chunk)
        return bool(self._pending)

    def _step(self) -> None:
        strm = self._strm
        if strm.avail_in == 0:
            chunk = self._pending or self._src.read(self._in_chunk)
            self._pending = b""
            if not chunk:
                raise FormatError("gzip layer ends before the end of its compressed stream (truncated)")
            if not isinstance(chunk, bytes):
                chunk = bytes(chunk)  # zlib reads from the bytes object's own (immutable) buffer
            if self._chunk:
                self._prev_last = self._chunk[-1]
            self._chunk = chunk
            self._chunk_base = self._totin
            strm.next_in = native.address(chunk)
            strm.avail_in = len(chunk)
        # Output goes round the ring, so the ring position of uncompressed offset p is p % ring.
        start = self._totout % self._ring
        room = min(self._ring - start, self._step_out)
        hunting = self._totout >= self.boundaries_from
        if not hunting:
            room = min(room, self.boundaries_from - self._totout)
        strm.next_out = self._win_addr + start
        strm.avail_out = avail_out = room
        avail_in = strm.avail_in
        ret = self._z.inflate(native.Z_BLOCK if hunting else native.Z_NO_FLUSH)
        used = avail_in - strm.avail_in
        made = avail_out - strm.avail_out
        if made:
            if self._background:
                # The reader copies it out of the ring itself (see _more): less work on this thread.
                self._batch.append((self._totout, made))
                self._batch_len += made
            else:
                kept = made
                if self._discard:
                    drop = min(self._discard, made)
                    self._discard -= drop
                    start += drop
                    kept -= drop
                if kept:
                    self._out.append(ctypes.string_at(self._win_addr + start, kept))
                    self._out_len += kept
        if used and self.observes_input:
            start = self._totin - self._chunk_base
            self.consumed(memoryview(self._chunk)[start : start + used])
        self._totin += used
        self._totout += made
        if ret == native.Z_STREAM_END:
            # A further gzip member follows (concatenated gzip, e.g. eStargz): continue with it.
            if strm.avail_in > 0 or self._more_input():
                self._z.reset(native.WINDOW_BITS_AUTO)
                self.member_start = self._totout
                self.members += 1
                self.stepped()
                return
            self.done = True
            self._z.close()
            self.finished()
            return
        if ret not in (native.Z_OK, native.Z_BUF_ERROR) or (
            ret == native.Z_BUF_ERROR and not used and not made
        ):
            raise FormatError(f"invalid gzip data at compressed offset {self._totin}: {self._z.message()}")
        dt = strm.data_type
        if hunting and dt & 128 and not dt & 64:
            self.at_boundary(dt & 7)
        self.stepped()

    # -- inflating ahead on a thread ------------------------------------------------------------------

    def _produce(self) -> None:
        try:
            while not self.done and not self._stop.is_set():
                self._step()
                if self._batch_len >= _BATCH or self.done:
                    self._hand_over(self._batch)
                    self._batch, self._batch_len = [], 0
            self._hand_over(None)
        except BaseException as exc:
            self._hand_over(exc)

    def _hand_over(self, item: list[tuple[int, int]] | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _more(self) -> bool:
        """More output into ``_out``; False at the end of the stream."""
        if not self._background:
            if self.done:
                return False
            self._step()
            return True
        if self._eof:
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="zran-inflate", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if item is None:
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        out = self._out
        if self._out_len > _BACKLOG:
            # A big read is collecting: copy what it has so far, so that the views stay within the ring.
            self._out = out = [bytes(piece) for piece in out]
        ring, view = self._ring, self._ring_view
        for offset, size in item:
            # A view, not a copy: the reader copies once, into its own buffer, or hashes it in place.
            at = offset % ring
            out.append(view[at : at + size])
            self._out_len += size
        if self._totout - item[0][0] > ring:
            raise RuntimeError("the inflating thread overwrote output its reader had not taken yet")
        return True

    def close(self) -> None:
        """Stop inflating ahead (a no-op without ``background``)."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
            self._thread.join()

    # -- the uncompressed stream -----------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            while self._more():
                pass
            n = self._out_len
        while self._out_len < n and self._more():
            pass
        out = self._out
        if not out:
            return b""
        if len(out[0]) >= n:
            first = out[0]
            if len(first) == n:
                del out[0]
            else:
                out[0] = first[n:]
            self._out_len -= min(n, len(first))
            return bytes(first[:n])
        parts = []
        need = n
        while out and need:
            piece = out[0]
            if len(piece) <= need:
                parts.append(piece)
                need -= len(piece)
                del out[0]
            else:
                parts.append(piece[:need])
                out[0] = piece[need:]
                need = 0
        data = b"".join(parts)
        self._out_len -= len(data)
        return data

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf).cast("B")
        want = len(view)
        while self._out_len < want and self._more():
            pass
        out = self._out
        got = 0
        while out and got < want:
            piece = out[0]
            take = min(len(piece), want - got)
            view[got : got + take] = piece[:take] if take < len(piece) else piece
            got += take
            if take < len(piece):
                out[0] = piece[take:]
            else:
                del out[0]
        self._out_len -= got
        return got

    def skip(self, n: int) -> int:
        """Discard ``n`` bytes of output (without copying them out of zlib's buffer, unless inflating
        ahead); returns the count."""
        skipped = self._drop(n)
        if self._background:
            while skipped < n and self._more():
                skipped += self._drop(n - skipped)
            return skipped
        self._discard = n - skipped
        while self._discard and not self.done:
            self._step()
        skipped = n - self._discard
        self._discard = 0
        return skipped

    def _drop(self, n: int) -> int:
        skipped = 0
        out = self._out
        while out and skipped < n:
            piece = out[0]
            take = min(len(piece), n - skipped)
            if take < len(piece):
                out[0] = piece[take:]
            else:
                del out[0]
            skipped += take
        self._out_len -= skipped
        return skipped

    def drain(self) -> None:
        """Inflate the rest of the stream (past the tar end), discarding the output."""
        self._out = []
        self._out_len = 0
        if self._background:
            while self._more():
                self._out, self._out_len = [], 0
            return
        while not self.done:
            self._discard = 1 << 62
            self._step()
        self._discard = 0
        self._out = []
        self._out_len = 0
