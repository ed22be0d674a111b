"""Single-pass layer scanners: they hand the uncompressed tar stream to the tar reader while recording
soci's checkpoints and span digests on the way, so a layer is read and inflated exactly once.

The gzip scanner mirrors soci's ``generate_zinfo_from_fp`` (zlib's zran.c): ``inflate(Z_BLOCK)`` returns at
every deflate block boundary, and a checkpoint is taken at a boundary that is not after the last block once
strictly more than ``span_size`` bytes were produced since the previous one (or at output 0, i.e. right after
the gzip header). Output goes through a 32 KiB circular buffer that is kept across gzip members, so each
checkpoint window is "the 32 KiB of output before it" exactly as soci stores it.
"""

from __future__ import annotations

import ctypes
import hashlib

from accel.errors import FormatError
from accel.formats.soci import _zlib
from accel.formats.soci.zinfo import BLOB_HEADER_SIZE, HEADER, POINT, WINSIZE
from accel.formats.streams import ByteSource

# soci reads 16 KiB at a time into a 32 KiB ring. Neither size changes where inflate(Z_BLOCK) stops at block
# boundaries, and the last 32 KiB before any point are the same in a bigger ring, so we use bigger ones
# (fewer calls from Python).
_IN_CHUNK = 1 << 16
_RING = 1 << 18


class _Stream:
    """What :class:`~accel.formats.tar.TarReader` needs from a stream."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buf: memoryview | bytearray) -> int:
        data = self.read(len(buf))
        memoryview(buf)[: len(data)] = data
        return len(data)


class GzipScanner(_Stream):
    """Inflates a gzip layer (one or more members) on demand, recording checkpoints and span digests."""

    def __init__(self, source: ByteSource, span_size: int) -> None:
        if span_size <= 0:
            raise ValueError("span_size must be positive")
        self._src = source
        self._span = span_size
        self._z = _zlib.Inflater(_zlib.WINDOW_BITS_AUTO)
        self._strm = self._z.strm
        self._win = ctypes.create_string_buffer(_RING)
        self._win_addr = ctypes.addressof(self._win)
        self._discard = 0
        self._strm.avail_out = 0
        self._strm.avail_in = 0
        self._chunk = b""
        self._chunk_base = 0
        self._prev_last = 0
        self._pending = b""
        self._totin = 0
        self._totout = 0
        self._last = 0
        self._hasher: hashlib._Hash | None = None
        self._out: list[bytes] = []
        self._out_len = 0
        self.done = False
        # Checkpoints go straight into the serialized blob (windows are 32 KiB each; no second copy).
        self.points: list[tuple[int, int, int]] = []
        self._blob = bytearray(BLOB_HEADER_SIZE)
        self.span_digests: list[str] = []

    @property
    def compressed_size(self) -> int:
        return self._totin

    @property
    def uncompressed_size(self) -> int:
        return self._totout

    def _more_input(self) -> bool:
        if not self._pending:
            self._pending = self._src.read(_IN_CHUNK)
        return bool(self._pending)

    def _step(self) -> None:
        strm = self._strm
        if strm.avail_in == 0:
            chunk = self._pending or self._src.read(_IN_CHUNK)
            self._pending = b""
            if not chunk:
                raise FormatError("gzip layer ends before the end of its compressed stream (truncated)")
            if not isinstance(chunk, bytes):
                chunk = bytes(chunk)  # zlib reads from the bytes object's own (immutable) buffer
            if self._chunk:
                self._prev_last = self._chunk[-1]
            self._chunk = chunk
            self._chunk_base = self._totin
            strm.next_in = _zlib.address(chunk)
            strm.avail_in = len(chunk)
        if strm.avail_out == 0:
            strm.next_out = self._win_addr
            strm.avail_out = _RING
        avail_in = strm.avail_in
        avail_out = strm.avail_out
        ret = self._z.inflate(_zlib.Z_BLOCK)
        used = avail_in - strm.avail_in
        made = avail_out - strm.avail_out
        if made:
            start = _RING - avail_out
            if self._discard:
                drop = min(self._discard, made)
                self._discard -= drop
                start += drop
                made -= drop
            if made:
                self._out.append(ctypes.string_at(self._win_addr + start, made))
                self._out_len += made
            made = avail_out - strm.avail_out
        if used and self._hasher is not None:
            start = self._totin - self._chunk_base
            self._hasher.update(memoryview(self._chunk)[start : start + used])
        self._totin += used
        self._totout += made
        if ret == _zlib.Z_STREAM_END:
            # A further gzip member follows (concatenated gzip, e.g. eStargz): continue with it.
            if strm.avail_in > 0 or self._more_input():
                self._z.reset(_zlib.WINDOW_BITS_AUTO)
                return
            self._finish()
            return
        if ret not in (_zlib.Z_OK, _zlib.Z_BUF_ERROR) or (ret == _zlib.Z_BUF_ERROR and not used and not made):
            raise FormatError(f"invalid gzip data at compressed offset {self._totin}: {self._z.message()}")
        dt = strm.data_type
        if dt & 128 and not dt & 64 and (self._totout == 0 or self._totout - self._last > self._span):
            self._checkpoint(dt & 7)

    def _checkpoint(self, bits: int) -> None:
        pos = _RING - self._strm.avail_out
        if pos >= WINSIZE:
            window = ctypes.string_at(self._win_addr + pos - WINSIZE, WINSIZE)
        else:  # wraps around; before the first wrap the end of the ring is still zeros, as soci's window is
            window = ctypes.string_at(self._win_addr + _RING - (WINSIZE - pos), WINSIZE - pos)
            window += ctypes.string_at(self._win_addr, pos)
        self.points.append((self._totin, self._totout, bits))
        self._blob += POINT.pack(self._totin, self._totout, bits)
        self._blob += window
        self._last = self._totout
        if self._hasher is not None:
            self.span_digests.append("sha256:" + self._hasher.hexdigest())
        hasher = hashlib.sha256()
        if bits:
            # The span starts with the partly used byte before the checkpoint (spans overlap by one byte).
            idx = self._totin - 1 - self._chunk_base
            hasher.update(bytes((self._chunk[idx] if idx >= 0 else self._prev_last,)))
        self._hasher = hasher

    def _finish(self) -> None:
        self.done = True
        self._z.close()
        if self._hasher is not None:
            self.span_digests.append("sha256:" + self._hasher.hexdigest())
            self._hasher = None
        if not self.points:
            raise FormatError("gzip layer has no deflate block boundary to index")
        HEADER.pack_into(self._blob, 0, len(self.points), self._span)

    def take_blob(self) -> bytes:
        """The version 2 checkpoint blob (call once, after the layer was read to its end)."""
        blob = bytes(self._blob)
        self._blob = bytearray()
        return blob

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            while not self.done:
                self._step()
            n = self._out_len
        while self._out_len < n and not self.done:
            self._step()
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
            return first[:n]
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
        while self._out_len < want and not self.done:
            self._step()
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
        """Discard ``n`` bytes of output without copying them out of zlib's buffer; returns the count."""
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
        self._discard = n - skipped
        while self._discard and not self.done:
            self._step()
        skipped = n - self._discard
        self._discard = 0
        return skipped

    def drain(self) -> None:
        """Inflate the rest of the layer (past the tar end), discarding the output."""
        self._out = []
        self._out_len = 0
        while not self.done:
            self._discard = 1 << 62
            self._step()
        self._discard = 0
        self._out = []
        self._out_len = 0


class TarScanner(_Stream):
    """Passes an uncompressed layer through, hashing the fixed-size spans of soci's ``TarZinfo``."""

    def __init__(self, source: ByteSource, span_size: int) -> None:
        if span_size <= 0:
            raise ValueError("span_size must be positive")
        self._src = source
        self._span = span_size
        self._hasher = hashlib.sha256()
        self._in_span = 0
        self.size = 0
        self.done = False
        self.span_digests: list[str] = []

    def read(self, n: int = -1) -> bytes:
        if self.done:
            return b""
        data = self._src.read(n)
        self._hash(data)
        if not data or n < 0:
            self.done = True
            self._finish()
        return data

    def _hash(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self._span - self._in_span)
            self._hasher.update(view[:take])
            self._in_span += take
            self.size += take
            view = view[take:]
            if self._in_span == self._span:
                self.span_digests.append("sha256:" + self._hasher.hexdigest())
                self._hasher = hashlib.sha256()
                self._in_span = 0

    def _finish(self) -> None:
        if self._in_span or not self.span_digests:
            self.span_digests.append("sha256:" + self._hasher.hexdigest())

    def drain(self) -> None:
        while not self.done:
            self.read(1 << 20)
