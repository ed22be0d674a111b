"""Verify a zTOC against its layer the way soci-snapshotter relies on it, in one streaming pass.

Checks what ``spanmanager.New`` checks when a layer is mounted (max span id, digest count, the gzip header
before the first span, increasing offsets), then every span digest, then that inflating each span from its
own checkpoint (primed bits + 32 KiB window) yields exactly the bytes a plain sequential gunzip gives for
that span, and finally that the TOC equals a fresh Go-compatible parse of the layer. Together these mean
every file extracted through the checkpoints equals the file in the layer.
"""

from __future__ import annotations

import hashlib
import itertools
import zlib
from dataclasses import dataclass

from accel.errors import FormatError
from accel.formats.soci.extract import inflate_at
from accel.formats.soci.scan import TarScanner
from accel.formats.soci.toc import metadata_from_entry
from accel.formats.soci.zinfo import WINSIZE, Checkpoint, decode_gzip_zinfo, decode_tar_zinfo
from accel.formats.soci.ztoc import (
    GZIP,
    UNCOMPRESSED,
    ZTOC_VERSION,
    Ztoc,
    check_toc_order,
    read_ztoc,
    serializes_to,
)
from accel.formats.streams import ByteSource
from accel.formats.tar import TarReader
from accel.oci.digest import Digester

_READ = 1 << 16
_OUT_STEP = 1 << 20


@dataclass(frozen=True, slots=True)
class VerifyReport:
    entries: int
    spans: int
    compressed_size: int
    uncompressed_size: int


class _Hashing:
    """Passes a stream through while digesting it."""

    def __init__(self, raw: ByteSource, expected: str) -> None:
        self._raw = raw
        self.digester = Digester.for_digest(expected)

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.digester.update(data)
        return data


def verify_ztoc(
    ztoc: bytes | Ztoc, layer: ByteSource, *, strict: bool = True, layer_digest: str | None = None
) -> VerifyReport:
    """Raise FormatError at the first problem; ``layer`` is read once, sequentially.

    With ``strict``, serialized input must also be exactly what re-serializing its content gives (so any
    flipped byte, even in flatbuffer padding, is caught); turn it off for zTOCs from other producers.
    soci never checks the gzip header fields before span 0 (mtime, OS, ...); pass ``layer_digest`` to
    cover every byte of the layer as well.
    """
    if layer_digest is None:
        return _verify(ztoc, layer, strict)
    hashing = _Hashing(layer, layer_digest)
    report = _verify(ztoc, hashing, strict)
    if hashing.digester.digest != layer_digest:
        raise FormatError(f"layer digest is {hashing.digester.digest}, expected {layer_digest}")
    return report


def _verify(ztoc: bytes | Ztoc, layer: ByteSource, strict: bool) -> VerifyReport:
    if isinstance(ztoc, Ztoc):
        check_toc_order(ztoc.toc)
        z = ztoc
    else:
        z = read_ztoc(ztoc)
        if strict and not serializes_to(z, bytes(ztoc)):
            raise FormatError("zTOC bytes are not the canonical serialization of their content")
    if z.version != ZTOC_VERSION:
        raise FormatError(f"unknown zTOC version {z.version!r}")
    if len(z.span_digests) != z.max_span_id + 1:
        raise FormatError(f"zTOC has {len(z.span_digests)} span digests for max_span_id {z.max_span_id}")
    if z.compression_algorithm == GZIP:
        return _verify_gzip(z, layer)
    if z.compression_algorithm == UNCOMPRESSED:
        return _verify_tar(z, layer)
    raise FormatError(f"unsupported zTOC compression {z.compression_algorithm!r}")


def _check_toc(z: Ztoc, reader: TarReader) -> int:
    count = 0
    for entry in reader:
        if count >= len(z.toc):
            raise FormatError("layer has more entries than the zTOC", entry=entry.name)
        if metadata_from_entry(entry) != z.toc[count]:
            raise FormatError("zTOC entry does not match the layer", entry=entry.name)
        count += 1
    if count != len(z.toc):
        raise FormatError(f"zTOC lists {len(z.toc)} entries, the layer has {count}")
    if reader.eof_offset != z.uncompressed_archive_size:
        raise FormatError(
            f"uncompressed archive size {z.uncompressed_archive_size} != tar end {reader.eof_offset}"
        )
    return count


def _compare_digests(z: Ztoc, got: list[str]) -> None:
    if len(got) != len(z.span_digests):
        raise FormatError(f"layer has {len(got)} spans, the zTOC {len(z.span_digests)}")
    for i, (want, have) in enumerate(zip(z.span_digests, got, strict=True)):
        if want != have:
            raise FormatError(f"span {i} digest mismatch: zTOC {want}, layer {have}")


def _verify_tar(z: Ztoc, layer: ByteSource) -> VerifyReport:
    info = decode_tar_zinfo(z.checkpoints)
    if z.max_span_id != info.max_span_id:
        raise FormatError(f"max_span_id {z.max_span_id} != {info.max_span_id} from the TarZinfo")
    scan = TarScanner(layer, info.span_size)
    count = _check_toc(z, TarReader(scan))
    scan.drain()
    if not scan.size == info.size == z.compressed_archive_size:
        raise FormatError(
            f"layer is {scan.size} bytes, the zTOC says {z.compressed_archive_size}/{info.size}"
        )
    _compare_digests(z, scan.span_digests)
    return VerifyReport(count, len(z.span_digests), scan.size, z.uncompressed_archive_size)


def _verify_gzip(z: Ztoc, layer: ByteSource) -> VerifyReport:
    info = decode_gzip_zinfo(z.checkpoints)
    points = info.checkpoints
    if z.max_span_id != len(points) - 1:
        raise FormatError(f"max_span_id {z.max_span_id} != {len(points)} checkpoints - 1")
    for prev, cur in itertools.pairwise(points):
        if not (cur.compressed > prev.compressed and cur.uncompressed > prev.uncompressed):
            raise FormatError(f"checkpoint offsets do not increase at compressed offset {cur.compressed}")
    for cp in points:
        if cp.bits > 7 or cp.compressed <= 0:
            raise FormatError(f"invalid checkpoint at compressed offset {cp.compressed}")
    stream = _GzipVerifyStream(layer, points)
    count = _check_toc(z, TarReader(stream))
    stream.drain()
    if stream.cpos != z.compressed_archive_size:
        raise FormatError(f"layer is {stream.cpos} bytes, the zTOC says {z.compressed_archive_size}")
    _compare_digests(z, stream.span_digests)
    return VerifyReport(count, len(points), stream.cpos, z.uncompressed_archive_size)


class _GzipVerifyStream:
    """Sequential gunzip (Python's zlib) feeding the tar reader, with per-span digests and restart checks."""

    def __init__(self, layer: ByteSource, points: tuple[Checkpoint, ...]) -> None:
        self._layer = layer
        self._points = points
        n = len(points)
        self._starts = [cp.span_start for cp in points]
        self._ends = [points[i + 1].compressed for i in range(n - 1)] + [-1]
        self._hashers = [hashlib.sha256() for _ in range(n)]
        self._bufs: list[list[bytes]] = [[] for _ in range(n)]
        self._uhash = [hashlib.sha256() for _ in range(n)]
        self._ulen = [0] * n
        self._next_check = 0
        self.cpos = 0
        self.upos = 0
        self.span_digests: list[str] = []
        self._d = zlib.decompressobj(47)
        self._member_started = False
        self._out: list[bytes] = []
        self._out_len = 0
        self.done = False
        self._header = b""
        self._in = b""
        self._tail = b""
        self._win_next = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buf: memoryview | bytearray) -> int:
        data = self.read(len(buf))
        memoryview(buf)[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or self._out_len < n) and not self.done:
            self._pump()
        data = b"".join(self._out)
        if n < 0 or len(data) <= n:
            self._out, self._out_len = [], 0
            return data
        self._out, self._out_len = [data[n:]], len(data) - n
        return data[:n]

    def drain(self) -> None:
        while not self.done:
            self._pump()
            self._out, self._out_len = [], 0

    def _pump(self) -> None:
        """Inflate at most ``_OUT_STEP`` bytes (highly compressible input must not balloon in memory)."""
        if not self._in:
            chunk = self._layer.read(_READ)
            if not chunk:
                if self._member_started and not self._d.eof:
                    raise FormatError("gzip layer is truncated")
                self.done = True
                self._finish()
                return
            self._feed_compressed(chunk)
            self._in = chunk
        out = self._inflate()
        if out:
            self._feed_uncompressed(out)
            self._out.append(out)
            self._out_len += len(out)
        self._run_checks()

    def _feed_compressed(self, chunk: bytes) -> None:
        start, end = self.cpos, self.cpos + len(chunk)
        if len(self._header) < self._starts[0]:
            self._header += chunk[: self._starts[0] - len(self._header)]
            if len(self._header) == self._starts[0]:
                _check_gzip_header(self._header)
        view = memoryview(chunk)
        for i in range(self._next_check, len(self._points)):
            s, e = self._starts[i], self._ends[i]
            if s >= end:
                break
            lo, hi = max(s, start), end if e < 0 else min(e, end)
            if lo < hi:
                piece = view[lo - start : hi - start]
                self._hashers[i].update(piece)
                self._bufs[i].append(bytes(piece))
        self.cpos = end

    def _inflate(self) -> bytes:
        try:
            self._member_started = True
            out = self._d.decompress(self._in, _OUT_STEP)
            if self._d.eof:
                self._in = self._d.unused_data
                self._d = zlib.decompressobj(47)
                self._member_started = False
            else:
                self._in = self._d.unconsumed_tail
        except zlib.error as exc:
            raise FormatError(f"invalid gzip data near compressed offset {self.cpos}: {exc}") from exc
        return out

    def _check_windows(self, out: bytes, start: int, end: int) -> None:
        """Each window must be the 32 KiB of output before its checkpoint (zero-filled at the front)."""
        points = self._points
        while self._win_next < len(points) and points[self._win_next].uncompressed <= end:
            cp = points[self._win_next]
            before = (self._tail + out[: cp.uncompressed - start])[-WINSIZE:]
            if cp.window != bytes(WINSIZE - len(before)) + before:
                raise FormatError(f"checkpoint {self._win_next} window differs from the layer's content")
            self._win_next += 1
        self._tail = (self._tail + out[-WINSIZE:])[-WINSIZE:]

    def _feed_uncompressed(self, out: bytes) -> None:
        start, end = self.upos, self.upos + len(out)
        self._check_windows(out, start, end)
        view = memoryview(out)
        points = self._points
        i = max(self._next_check, 0)
        while i < len(points):
            s = points[i].uncompressed
            e = points[i + 1].uncompressed if i + 1 < len(points) else end
            if s >= end:
                break
            lo, hi = max(s, start), min(e, end)
            if lo < hi:
                self._uhash[i].update(view[lo - start : hi - start])
                self._ulen[i] += hi - lo
            i += 1
        self.upos = end

    def _run_checks(self) -> None:
        last = len(self._points) - 1
        while self._next_check < last:
            i = self._next_check
            if self.cpos < self._ends[i] or self.upos < self._points[i + 1].uncompressed:
                return
            self._check_span(i, self._points[i + 1].uncompressed - self._points[i].uncompressed)
            self._next_check += 1

    def _finish(self) -> None:
        last = len(self._points) - 1
        self._run_checks()
        self._check_windows(b"", self.upos, self.upos)  # e.g. a checkpoint at the very end
        if self._next_check != last or self.upos < self._points[last].uncompressed:
            raise FormatError("gzip layer ends before its last checkpoint")
        self._check_span(last, self.upos - self._points[last].uncompressed)
        self.span_digests = ["sha256:" + h.hexdigest() for h in self._hashers]

    def _check_span(self, i: int, length: int) -> None:
        cp = self._points[i]
        restarted = hashlib.sha256()
        got = 0
        data = b"".join(self._bufs[i])
        self._bufs[i] = []
        try:
            for piece in inflate_at(cp, [data]):
                take = piece[: length - got]
                restarted.update(take)
                got += len(take)
                if got >= length:
                    break
        except FormatError as exc:
            raise FormatError(f"span {i} cannot be inflated from its checkpoint: {exc.reason}") from exc
        if got != length or restarted.digest() != self._uhash[i].digest() or self._ulen[i] != length:
            raise FormatError(f"span {i} inflated from its checkpoint differs from the layer's content")


def _check_gzip_header(header: bytes) -> None:
    """What the snapshotter's ``gzip.NewReader`` over the bytes before span 0 checks: a complete header."""
    if header[:3] != b"\x1f\x8b\x08":
        raise FormatError("layer does not start with a gzip header")
    d = zlib.decompressobj(31)
    try:
        d.decompress(header)
    except zlib.error as exc:
        raise FormatError(f"invalid gzip header: {exc}") from exc
