"""A streaming tar reader that parses a layer exactly the way Go's ``archive/tar`` Reader does.

Every lazy-pulling format keys its output on what Go's reader reports (soci's zTOC, estargz's TOC, the
nydus builder's view of a layer), and Python's ``tarfile`` differs from Go in ways that change bytes: it
strips the trailing ``/`` of directories, merges global PAX headers into members, normalises fields. So
this module mirrors Go 1.19 ``reader.go`` (``next``, ``readHeader``, ``mergePAX``, sparse maps) instead.

Names and PAX values are ``str`` decoded as UTF-8 with ``surrogateescape``, so arbitrary bytes round-trip
via ``.encode("utf-8", "surrogateescape")``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TypeGuard

from accel.errors import FormatError
from accel.formats.streams import ByteSource

__all__ = ["BLOCK_SIZE", "TarEntry", "TarReader", "check_safe", "clean_path", "decode_name", "encode_name"]

BLOCK_SIZE = 512
_ZERO_BLOCK = bytes(BLOCK_SIZE)
_CHUNK = 1 << 20
_MAX_SPECIAL_FILE = 1 << 20  # Go's maxSpecialFileSize for PAX and GNU long-name data

# Go's Format bits (format.go).
_F_V7 = 1
_F_USTAR = 2
_F_PAX = 4
_F_GNU = 8
_F_STAR = 16

_HEADER_ONLY_TYPES = frozenset(b"123456")  # link, symlink, char, block, dir, fifo
_HIGH_BYTES = bytes(range(128, 256))
_OCTAL = re.compile(rb"[0-7]+")
_OCTAL_DIGITS = b"01234567"
_DECIMAL = re.compile(rb"[+-]?[0-9]+")
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_GO_ZERO_TIME = -62135596800  # time.Time{}.Unix(): 0001-01-01T00:00:00Z
# End offsets of size, mode, uid, gid, mtime, devmajor, devminor: USTAR wants each to end in NUL.
_USTAR_NUMERIC_ENDS = (136, 108, 116, 124, 148, 337, 345)


def decode_name(raw: bytes) -> str:
    """Bytes from a tar header or PAX record as ``str`` (UTF-8, undecodable bytes kept as surrogates)."""
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    """The inverse of :func:`decode_name`."""
    return name.encode("utf-8", "surrogateescape")


@dataclass(slots=True)
class TarEntry:
    """One entry as Go's ``tar.Reader.Next`` reports it, plus where its bytes are in the stream."""

    name: str
    type: bytes
    linkname: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime: int
    mtime_nsec: int
    atime: tuple[int, int] | None
    ctime: tuple[int, int] | None
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]
    pax_records: dict[str, str]
    format: str
    header_offset: int
    data_offset: int
    raw_header: bytes
    sparse: list[tuple[int, int]] | None
    # Bytes of content physically stored after ``data_offset`` (before the padding to 512). Differs from
    # ``size`` for header-only types (always 0) and sparse files (only the data fragments are stored).
    data_length: int = 0

    @property
    def is_dir(self) -> bool:
        return self.type == b"5"

    @property
    def is_reg(self) -> bool:
        return self.type in (b"0", b"7", b"S")

    @property
    def is_symlink(self) -> bool:
        return self.type == b"2"

    @property
    def is_hardlink(self) -> bool:
        return self.type == b"1"

    @property
    def is_chardev(self) -> bool:
        return self.type == b"3"

    @property
    def is_blockdev(self) -> bool:
        return self.type == b"4"

    @property
    def is_fifo(self) -> bool:
        return self.type == b"6"

    @property
    def end_offset(self) -> int:
        """Offset just after this entry's content padded to a block (where the next header starts)."""
        return self.data_offset + self.data_length + (-self.data_length % BLOCK_SIZE)


def _err(message: str, entry: str | None) -> FormatError:
    return FormatError(f"tar: {message}", entry=entry)


def _go_parse_int(raw: bytes, entry: str | None) -> int:
    """``strconv.ParseInt(s, 10, 64)``: optional sign, ASCII digits only, int64 range."""
    if _DECIMAL.fullmatch(raw) is None:
        raise _err(f"invalid number {raw!r}", entry)
    value = int(raw)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _err(f"number out of range {raw!r}", entry)
    return value


def _c_string(field: bytes) -> bytes:
    """Go's ``parseString``: everything up to the first NUL."""
    nul = field.find(0)
    return field if nul < 0 else field[:nul]


def _parse_octal(field: bytes, entry: str | None) -> int:
    b = field.strip(b" \x00")
    if not b:
        return 0
    if len(b) <= 21 and not b.translate(None, _OCTAL_DIGITS):
        return int(b, 8)  # the common case: only octal digits, too short to overflow int64
    b = _c_string(b)
    if _OCTAL.fullmatch(b) is None:
        raise _err(f"invalid octal field {field!r}", entry)
    value = int(b, 8)
    if value >> 64:
        raise _err(f"octal field out of range {field!r}", entry)
    return value - (1 << 64) if value >> 63 else value  # Go converts the uint64 to int64


def _parse_numeric(field: bytes, entry: str | None) -> int:
    """Go's ``parseNumeric``: base-256 two's complement when the top bit is set, else octal."""
    if field and field[0] & 0x80:
        negative = bool(field[0] & 0x40)
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if negative:
            value ^= (1 << (8 * len(field) - 1)) - 1  # invert the data bits, as Go does with inv=0xff
        if value >> 63:
            raise _err(f"base-256 field out of range {field!r}", entry)
        return ~value if negative else value
    return _parse_octal(field, entry)


def _block_format(blk: bytes) -> int:
    """Go's ``block.getFormat``: 0 when the checksum does not match."""
    field = blk[148:156].strip(b" \x00")
    if field:
        field = _c_string(field)
        if _OCTAL.fullmatch(field) is None:
            return 0
        stored = int(field, 8)
    else:
        stored = 0
    unsigned = sum(blk) - sum(blk[148:156]) + 8 * 32
    if stored != unsigned:
        high = len(blk) - len(blk.translate(None, _HIGH_BYTES))
        high -= 8 - len(blk[148:156].translate(None, _HIGH_BYTES))
        if stored != unsigned - 256 * high:
            return 0
    magic = blk[257:263]
    if magic == b"ustar\x00":
        return _F_STAR if blk[508:512] == b"tar\x00" else _F_USTAR | _F_PAX
    if magic == b"ustar " and blk[263:265] == b" \x00":
        return _F_GNU
    return _F_V7


def _go_time(secs: int, nsecs: int) -> tuple[int, int]:
    """``time.Unix(secs, nsecs)`` normalised to (seconds, 0 <= nanoseconds < 1e9)."""
    extra, nsec = divmod(nsecs, 1_000_000_000)
    return secs + extra, nsec


def _parse_pax_time(value: bytes, entry: str | None) -> tuple[int, int]:
    secs_raw, _, frac = value.partition(b".")
    secs = _go_parse_int(secs_raw, entry)
    if not frac:
        return secs, 0
    if frac.strip(b"0123456789"):
        raise _err(f"invalid PAX time {value!r}", entry)
    nsecs = int(frac[:9].ljust(9, b"0"))
    if secs_raw.startswith(b"-"):
        return _go_time(secs, -nsecs)
    return _go_time(secs, nsecs)


def _parse_pax(data: bytes, entry: str | None) -> dict[bytes, bytes]:
    """Go's ``parsePAX``: records ``"%d %s=%s\\n"``; GNU sparse 0.0 offset/numbytes pairs are joined."""
    records: dict[bytes, bytes] = {}
    sparse_map: list[bytes] = []
    pos = 0
    end = len(data)
    while pos < end:
        space = data.find(b" ", pos)
        if space < 0:
            raise _err("invalid PAX record", entry)
        n_raw = data[pos:space]
        if _DECIMAL.fullmatch(n_raw) is None:
            raise _err("invalid PAX record length", entry)
        n = int(n_raw)
        if n < 5 or n > end - pos or n <= len(n_raw) + 1:
            raise _err("invalid PAX record length", entry)
        rec_end = pos + n
        if data[rec_end - 1] != 0x0A:
            raise _err("PAX record does not end in newline", entry)
        key, eq, value = data[space + 1 : rec_end - 1].partition(b"=")
        if not eq or not key:
            raise _err("invalid PAX record", entry)
        if key in (b"path", b"linkpath", b"uname", b"gname"):
            if 0 in value:
                raise _err("NUL in PAX record value", entry)
        elif 0 in key:
            raise _err("NUL in PAX record key", entry)
        pos = rec_end
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            expect = b"GNU.sparse.offset" if len(sparse_map) % 2 == 0 else b"GNU.sparse.numbytes"
            if key != expect or b"," in value:
                raise _err("invalid GNU sparse 0.0 PAX records", entry)
            sparse_map.append(value)
        else:
            records[key] = value
    if sparse_map:
        records[b"GNU.sparse.map"] = b",".join(sparse_map)
    return records


class _Hdr:
    """Mutable header state while the meta entries before a file are folded in (Go's ``Header``)."""

    __slots__ = (
        "atime",
        "ctime",
        "devmajor",
        "devminor",
        "fmt",
        "gid",
        "gname",
        "linkname",
        "mode",
        "mtime",
        "name",
        "pax",
        "size",
        "type",
        "uid",
        "uname",
    )

    def __init__(self) -> None:
        self.type = 0
        self.name = b""
        self.linkname = b""
        self.size = 0
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.mtime: tuple[int, int] = (0, 0)
        self.uname = b""
        self.gname = b""
        self.devmajor = 0
        self.devminor = 0
        self.atime: tuple[int, int] | None = None
        self.ctime: tuple[int, int] | None = None
        self.fmt = 0
        self.pax: dict[bytes, bytes] | None = None


def _parse_header(blk: bytes, fmt: int) -> _Hdr:
    """Go's ``readHeader`` once the block is known to be a header of format ``fmt``."""
    hdr = _Hdr()
    hdr.name = _c_string(blk[0:100])
    who = decode_name(hdr.name)
    hdr.type = blk[156]
    hdr.linkname = _c_string(blk[157:257])
    hdr.size = _parse_numeric(blk[124:136], who)
    hdr.mode = _parse_numeric(blk[100:108], who)
    hdr.uid = _parse_numeric(blk[108:116], who)
    hdr.gid = _parse_numeric(blk[116:124], who)
    hdr.mtime = (_parse_numeric(blk[136:148], who), 0)
    if fmt > _F_V7:
        hdr.uname = _c_string(blk[265:297])
        hdr.gname = _c_string(blk[297:329])
        hdr.devmajor = _parse_numeric(blk[329:337], who)
        hdr.devminor = _parse_numeric(blk[337:345], who)
        prefix = b""
        if fmt & (_F_USTAR | _F_PAX):
            hdr.fmt = fmt
            prefix = _c_string(blk[345:500])
            if len(blk.translate(None, _HIGH_BYTES)) != BLOCK_SIZE:
                hdr.fmt = 0  # non-ASCII bytes: not a compliant USTAR block
            if any(blk[end - 1] != 0 for end in _USTAR_NUMERIC_ENDS):
                hdr.fmt = 0  # numeric fields must end in NUL
        elif fmt & _F_STAR:
            prefix = _c_string(blk[345:476])
            hdr.atime = (_parse_numeric(blk[476:488], who), 0)
            hdr.ctime = (_parse_numeric(blk[488:500], who), 0)
        elif fmt & _F_GNU:
            hdr.fmt = fmt
            try:
                if blk[345] != 0:
                    hdr.atime = (_parse_numeric(blk[345:357], who), 0)
                if blk[357] != 0:
                    hdr.ctime = (_parse_numeric(blk[357:369], who), 0)
            except FormatError:
                # Pre-Go1.8 writers put a USTAR prefix where GNU keeps atime/ctime (golang/go#12594).
                hdr.atime = hdr.ctime = None
                candidate = _c_string(blk[345:500])
                if len(candidate.translate(None, _HIGH_BYTES)) == len(candidate):
                    prefix = candidate
                hdr.fmt = 0
        if prefix:
            hdr.name = prefix + b"/" + hdr.name
    return hdr


def _merge_pax(hdr: _Hdr, pax: dict[bytes, bytes] | None) -> dict[str, bytes]:
    """Go's ``mergePAX``; returns the xattrs (``SCHILY.xattr.*`` with non-empty values)."""
    xattrs: dict[str, bytes] = {}
    if not pax:
        return xattrs
    who = decode_name(pax.get(b"path") or hdr.name)
    for key, value in pax.items():
        if not value:
            continue  # keep the header's value, as Go does
        if key == b"path":
            hdr.name = value
        elif key == b"linkpath":
            hdr.linkname = value
        elif key == b"uname":
            hdr.uname = value
        elif key == b"gname":
            hdr.gname = value
        elif key == b"uid":
            hdr.uid = _go_parse_int(value, who)
        elif key == b"gid":
            hdr.gid = _go_parse_int(value, who)
        elif key == b"atime":
            hdr.atime = _parse_pax_time(value, who)
        elif key == b"mtime":
            hdr.mtime = _parse_pax_time(value, who)
        elif key == b"ctime":
            hdr.ctime = _parse_pax_time(value, who)
        elif key == b"size":
            hdr.size = _go_parse_int(value, who)
        elif key.startswith(b"SCHILY.xattr."):
            xattrs[decode_name(key[13:])] = value
    return xattrs


def _format_name(fmt: int, block_fmt: int) -> str:
    if fmt == _F_USTAR:
        return "ustar"
    if fmt == _F_PAX:
        return "pax"
    if fmt == _F_GNU:
        return "gnu"
    return "v7" if block_fmt == _F_V7 else "unknown"


def _validate_sparse(fragments: list[tuple[int, int]], size: int) -> bool:
    if size < 0:
        return False
    prev_end = 0
    for offset, length in fragments:
        if offset < 0 or length < 0 or offset > _INT64_MAX - length:
            return False
        if offset + length > size or prev_end > offset:
            return False
        prev_end = offset + length
    return True


class TarReader:
    """Sequential Go-compatible tar reader over any binary stream (seekable or not).

    Iterating yields :class:`TarEntry` objects; :meth:`read`/:meth:`readinto` return the current entry's
    content (sparse files are expanded to their logical content, as Go does). ``offset`` counts the bytes
    the parser has consumed from the stream (it buffers ahead internally, so the underlying stream's own
    position may be further on). A stream may offer ``skip(n) -> int`` (discard up to ``n`` bytes,
    return how many); unread content is then skipped through it instead of being read.
    """

    def __init__(self, stream: ByteSource) -> None:
        self._stream = stream
        self._buf = b""
        self._bpos = 0
        self._consumed = 0
        self._remaining = 0  # physical content bytes of the current entry not yet consumed
        self._pad = 0
        self._entry: TarEntry | None = None
        # Logical reading state for sparse entries: position, logical size, fragment index.
        self._sparse: list[tuple[int, int]] | None = None
        self._lpos = 0
        self._lsize = 0
        self._frag = 0
        self._done = False
        self._eof_offset = 0
        self._trailer_parts: list[bytes] = []
        self._trailer: bytes | None = None
        self._scratch: bytearray | None = None
        self._map_consumed = 0  # data-section bytes taken by a PAX 1.0 sparse map
        self._error: FormatError | None = None

    # -- buffered input -------------------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at end of stream)."""
        buf, pos = self._buf, self._bpos
        avail = len(buf) - pos
        if avail >= n:
            self._bpos = pos + n
            self._consumed += n
            return buf[pos : pos + n]
        parts = [buf[pos:]] if avail else []
        need = n - avail
        self._buf, self._bpos = b"", 0
        while need > 0:
            chunk = self._stream.read(max(need, _CHUNK))
            if not chunk:
                break
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._buf, self._bpos = chunk, need
                need = 0
            else:
                parts.append(chunk)
                need -= len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._consumed += len(data)
        return data

    def _skip(self, n: int) -> int:
        """Discard up to ``n`` bytes; returns how many were discarded."""
        avail = len(self._buf) - self._bpos
        if avail >= n:
            self._bpos += n
            self._consumed += n
            return n
        skipped = avail
        self._buf, self._bpos = b"", 0
        stream = self._stream
        left = n - skipped
        skipper = getattr(stream, "skip", None)
        if skipper is not None:
            # A decompressing stream can drop its output without handing it over (see accel.formats.soci).
            skipped += int(skipper(left))
            self._consumed += skipped
            return skipped
        if left > _CHUNK and _seekable(stream):
            # Seek to one byte before the end and read that byte, so a truncated stream is still noticed.
            stream.seek(left - 1, 1)
            if not stream.read(1):
                raise _err(f"unexpected end of stream after offset {self._consumed + skipped}", self._name())
            self._consumed += n
            return n
        if self._scratch is None:
            self._scratch = bytearray(_CHUNK)
        view = memoryview(self._scratch)
        while left > 0:
            got = _readinto(stream, view[: min(left, _CHUNK)])
            if not got:
                break
            left -= got
            skipped += got
        self._consumed += skipped
        return skipped

    def _name(self) -> str | None:
        return self._entry.name if self._entry is not None else None

    # -- public API -----------------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes consumed from the stream by the parser so far."""
        return self._consumed

    @property
    def eof_offset(self) -> int:
        """Where Go's reader stands after ``Next`` returned EOF (just after the end-of-archive blocks)."""
        if not self._done:
            raise ValueError("tar iteration has not finished")
        return self._eof_offset

    @property
    def trailer(self) -> bytes:
        """After iteration: every byte after the last entry's padded content, up to the end of the stream."""
        if not self._done:
            raise ValueError("tar iteration has not finished")
        if self._trailer is None:
            parts = self._trailer_parts
            while True:
                chunk = self._take(_CHUNK)
                if not chunk:
                    break
                parts.append(chunk)
            self._trailer = b"".join(parts)
            self._trailer_parts = []
        return self._trailer

    @property
    def current(self) -> TarEntry | None:
        """The entry whose content :meth:`read` returns."""
        return self._entry

    def __iter__(self) -> Iterator[TarEntry]:
        return self

    def __next__(self) -> TarEntry:
        if self._error is not None:
            raise self._error  # errors are sticky, as in Go: the stream position is no longer meaningful
        try:
            entry = self._next()
        except FormatError as exc:
            self._error = exc
            raise
        if entry is None:
            raise StopIteration
        return entry

    def read(self, n: int = -1) -> bytes:
        """Content of the current entry, up to ``n`` bytes (all that is left when ``n < 0``)."""
        if self._sparse is not None:
            return self._read_sparse(n)
        if n < 0 or n > self._remaining:
            n = self._remaining
        if n == 0:
            return b""
        data = self._take(n)
        self._remaining -= len(data)
        if len(data) < n:
            raise _err("unexpected end of stream in file content", self._name())
        return data

    def read_raw(self, n: int = -1) -> bytes:
        """Physical content bytes as stored (for sparse files: the data fragments without the holes)."""
        if self._sparse is not None:
            self._sparse = None  # logical reading is no longer possible once raw bytes were taken
        return self.read(n)

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Fill ``buf`` with content of the current entry; returns the byte count (0 at its end)."""
        if self._sparse is not None:
            data = self._read_sparse(len(buf))
            memoryview(buf)[: len(data)] = data
            return len(data)
        view = memoryview(buf).cast("B")
        want = min(len(view), self._remaining)
        if want == 0:
            return 0
        avail = len(self._buf) - self._bpos
        if avail >= want or want < _CHUNK // 4:
            data = self._take(want)
            got = len(data)
            view[:got] = data
        else:
            got = 0
            if avail:
                view[:avail] = memoryview(self._buf)[self._bpos :]
                got = avail
                self._consumed += avail
                self._buf, self._bpos = b"", 0
            while got < want:
                n = _readinto(self._stream, view[got:want])
                if not n:
                    break
                got += n
                self._consumed += n
        self._remaining -= got
        if got < want:
            raise _err("unexpected end of stream in file content", self._name())
        return got

    # -- sparse content -------------------------------------------------------------------------------

    def _read_sparse(self, n: int) -> bytes:
        sparse = self._sparse
        assert sparse is not None
        left = self._lsize - self._lpos
        if n < 0 or n > left:
            n = left
        out: list[bytes] = []
        while n > 0:
            if self._frag < len(sparse):
                offset, length = sparse[self._frag]
                if self._lpos < offset:
                    step = min(n, offset - self._lpos)
                    out.append(bytes(step))
                else:
                    step = min(n, offset + length - self._lpos)
                    if step > self._remaining:
                        raise _err("sparse file has less data than its map describes", self._name())
                    data = self._take(step)
                    self._remaining -= len(data)
                    if len(data) < step:
                        raise _err("unexpected end of stream in file content", self._name())
                    out.append(data)
                    if self._lpos + step == offset + length:
                        self._frag += 1
            else:
                step = n
                out.append(bytes(step))
            self._lpos += step
            n -= step
        if self._lpos == self._lsize and self._remaining > 0:
            raise _err("sparse file has more data than its map describes", self._name())
        return b"".join(out)

    # -- Go's Reader.next ------------------------------------------------------------------------------

    def _finish(self, trailer_start: list[bytes]) -> None:
        self._done = True
        self._entry = None
        self._sparse = None
        self._eof_offset = self._consumed
        self._trailer_parts = trailer_start

    def _next(self) -> TarEntry | None:
        if self._done:
            return None
        # Discard the rest of the current entry; a short stream inside content is an error.
        if self._remaining:
            left = self._remaining
            self._remaining = 0
            if self._skip(left) < left:
                raise _err("unexpected end of stream in file content", self._name())
        self._sparse = None
        pad, self._pad = self._pad, 0
        if pad and self._skip(pad) < pad:
            self._finish([])  # Go ignores a truncated final padding (tryReadFull -> io.EOF)
            return None
        self._entry = None

        header_offset = self._consumed
        raw: list[bytes] = []
        fmt = _F_USTAR | _F_PAX | _F_GNU
        pax: dict[bytes, bytes] | None = None
        long_name = b""
        long_link = b""
        while True:
            blk = self._take(BLOCK_SIZE)
            if len(blk) < BLOCK_SIZE:
                if not blk:
                    self._finish(raw)
                    return None
                raise _err("unexpected end of stream in tar header", None)
            if blk == _ZERO_BLOCK:
                blk2 = self._take(BLOCK_SIZE)
                if len(blk2) == BLOCK_SIZE and blk2 != _ZERO_BLOCK:
                    raise _err("zero block followed by a non-zero block", None)
                if 0 < len(blk2) < BLOCK_SIZE:
                    raise _err("unexpected end of stream in end-of-archive marker", None)
                raw.append(blk)
                raw.append(blk2)
                self._finish(raw)
                return None
            block_fmt = _block_format(blk)
            if block_fmt == 0:
                raise _err("invalid tar header (bad checksum or magic)", decode_name(_c_string(blk[:100])))
            raw.append(blk)
            hdr = _parse_header(blk, block_fmt)
            who = decode_name(hdr.name)
            phys = 0 if hdr.type in _HEADER_ONLY_TYPES else hdr.size
            if phys < 0:
                raise _err(f"negative size {phys}", who)
            fmt &= hdr.fmt
            typ = hdr.type
            if typ in (0x78, 0x67, 0x4C, 0x4B):  # x, g, L, K
                if phys > _MAX_SPECIAL_FILE:
                    raise _err(f"extension header too large ({phys} bytes)", who)
                data = self._take(phys)
                if len(data) < phys:
                    raise _err("unexpected end of stream in extension header", who)
                raw.append(data)
                if typ in (0x78, 0x67):
                    fmt &= _F_PAX
                    pax = _parse_pax(data, who)
                else:
                    fmt &= _F_GNU
                    if typ == 0x4C:
                        long_name = _c_string(data)
                    else:
                        long_link = _c_string(data)
                pad = -phys % BLOCK_SIZE
                padding = self._take(pad)
                raw.append(padding)
                if len(padding) < pad:
                    self._finish(raw)  # Go ends quietly on truncated padding
                    return None
                if typ == 0x67:
                    assert pax is not None
                    return self._global_entry(hdr, pax, fmt, block_fmt, header_offset, raw)
                continue
            return self._file_entry(hdr, blk, block_fmt, pax, long_name, long_link, fmt, header_offset, raw)

    def _global_entry(
        self,
        hdr: _Hdr,
        pax: dict[bytes, bytes],
        fmt: int,
        block_fmt: int,
        header_offset: int,
        raw: list[bytes],
    ) -> TarEntry:
        xattrs = _merge_pax(hdr, pax)
        entry = TarEntry(
            name=decode_name(hdr.name),
            type=b"g",
            linkname="",
            mode=0,
            uid=0,
            gid=0,
            uname="",
            gname="",
            size=0,
            mtime=_GO_ZERO_TIME,  # Go returns the global header with a zero time.Time
            mtime_nsec=0,
            atime=None,
            ctime=None,
            devmajor=0,
            devminor=0,
            xattrs=xattrs,
            pax_records={decode_name(k): decode_name(v) for k, v in pax.items()},
            format=_format_name(fmt, block_fmt),
            header_offset=header_offset,
            data_offset=self._consumed,
            raw_header=b"".join(raw),
            sparse=None,
            data_length=0,
        )
        self._entry = entry
        return entry

    def _file_entry(
        self,
        hdr: _Hdr,
        blk: bytes,
        block_fmt: int,
        pax: dict[bytes, bytes] | None,
        long_name: bytes,
        long_link: bytes,
        fmt: int,
        header_offset: int,
        raw: list[bytes],
    ) -> TarEntry:
        xattrs = _merge_pax(hdr, pax)
        if long_name:
            hdr.name = long_name
        if long_link:
            hdr.linkname = long_link
        if hdr.type == 0:
            hdr.type = 0x35 if hdr.name.endswith(b"/") else 0x30  # legacy '\0': dir by trailing slash
        who = decode_name(hdr.name)
        phys = 0 if hdr.type in _HEADER_ONLY_TYPES else hdr.size
        if phys < 0:
            raise _err(f"negative size {phys}", who)
        sparse = self._sparse_map(hdr, blk, pax or {}, raw, who)
        who = decode_name(hdr.name)  # GNU.sparse.name may have renamed it
        if sparse is not None and (hdr.type in _HEADER_ONLY_TYPES or not _validate_sparse(sparse, hdr.size)):
            raise _err("invalid sparse map", who)
        # A PAX 1.0 sparse map sits at the start of the data section and was consumed above.
        data_length = phys - self._map_consumed
        if fmt & _F_USTAR and fmt & _F_PAX:
            fmt = _F_USTAR
        entry = TarEntry(
            name=who,
            type=bytes((hdr.type,)),
            linkname=decode_name(hdr.linkname),
            mode=hdr.mode,
            uid=hdr.uid,
            gid=hdr.gid,
            uname=decode_name(hdr.uname),
            gname=decode_name(hdr.gname),
            size=hdr.size,
            mtime=hdr.mtime[0],
            mtime_nsec=hdr.mtime[1],
            atime=hdr.atime,
            ctime=hdr.ctime,
            devmajor=hdr.devmajor,
            devminor=hdr.devminor,
            xattrs=xattrs,
            pax_records={decode_name(k): decode_name(v) for k, v in pax.items()} if pax else {},
            format=_format_name(fmt, block_fmt),
            header_offset=header_offset,
            data_offset=self._consumed,
            raw_header=b"".join(raw),
            sparse=sparse,
            data_length=data_length,
        )
        self._entry = entry
        self._remaining = data_length
        # Padding follows the whole physical data section, sparse map included.
        self._pad = -phys % BLOCK_SIZE
        if sparse is not None:
            self._sparse = sparse
            self._lpos = 0
            self._lsize = hdr.size
            self._frag = 0
        return entry

    def _sparse_map(
        self, hdr: _Hdr, blk: bytes, pax: dict[bytes, bytes], raw: list[bytes], who: str
    ) -> list[tuple[int, int]] | None:
        """Go's ``handleSparseFile``: the data fragments of a GNU or PAX sparse file, else ``None``."""
        self._map_consumed = 0
        if hdr.type == 0x53:  # 'S': old GNU sparse
            return self._old_gnu_sparse(hdr, blk, raw, who)
        major = pax.get(b"GNU.sparse.major", b"")
        minor = pax.get(b"GNU.sparse.minor", b"")
        if major == b"0" and minor in (b"0", b"1"):
            is1x0 = False
        elif major == b"1" and minor == b"0":
            is1x0 = True
        elif major or minor:
            return None  # unknown GNU sparse PAX version: a plain file for Go
        elif pax.get(b"GNU.sparse.map"):
            is1x0 = False
        else:
            return None
        name = pax.get(b"GNU.sparse.name")
        if name:
            hdr.name = name
        size = pax.get(b"GNU.sparse.size") or pax.get(b"GNU.sparse.realsize")
        phys = hdr.size
        if size:
            hdr.size = _go_parse_int(size, who)
        if is1x0:
            return self._sparse_map_1x0(phys, raw, decode_name(hdr.name))
        return _sparse_map_0x1(pax, who)

    def _old_gnu_sparse(self, hdr: _Hdr, blk: bytes, raw: list[bytes], who: str) -> list[tuple[int, int]]:
        if _block_format(blk) != _F_GNU:
            raise _err("GNU sparse header in a non-GNU block", who)
        hdr.size = _parse_numeric(blk[483:495], who)
        fragments: list[tuple[int, int]] = []
        area, count, extended = blk[386:482], 4, blk[482]
        while True:
            for i in range(count):
                field = area[i * 24 : i * 24 + 24]
                if field[0] == 0:
                    break
                fragments.append((_parse_numeric(field[:12], who), _parse_numeric(field[12:], who)))
            if not extended:
                return fragments
            ext = self._take(BLOCK_SIZE)
            if len(ext) < BLOCK_SIZE:
                raise _err("unexpected end of stream in GNU sparse header", who)
            raw.append(ext)
            area, count, extended = ext[:504], 21, ext[504]

    def _sparse_map_1x0(self, phys: int, raw: list[bytes], who: str) -> list[tuple[int, int]]:
        """Map stored in the data section: decimal numbers, one per line, in whole blocks."""
        text = bytearray()
        newlines = 0
        taken = 0

        def feed(n: int) -> None:
            nonlocal newlines, taken
            while newlines < n:
                if taken + BLOCK_SIZE > phys:
                    raise _err("unexpected end of sparse map", who)
                block = self._take(BLOCK_SIZE)
                if len(block) < BLOCK_SIZE:
                    raise _err("unexpected end of stream in sparse map", who)
                raw.append(block)
                taken += BLOCK_SIZE
                text.extend(block)
                newlines += block.count(b"\n")

        feed(1)
        lines = iter(bytes(text).split(b"\n"))
        count = _go_parse_int(next(lines), who)
        if count < 0:
            raise _err("negative sparse entry count", who)
        feed(1 + 2 * count)
        tokens = bytes(text).split(b"\n")
        fragments = []
        for i in range(count):
            fragments.append((_go_parse_int(tokens[1 + 2 * i], who), _go_parse_int(tokens[2 + 2 * i], who)))
        self._map_consumed = taken
        return fragments


def _sparse_map_0x1(pax: dict[bytes, bytes], who: str) -> list[tuple[int, int]]:
    count = _go_parse_int(pax.get(b"GNU.sparse.numblocks", b""), who)
    if count < 0:
        raise _err("negative sparse entry count", who)
    raw_map = pax.get(b"GNU.sparse.map", b"")
    parts = raw_map.split(b",") if raw_map else []
    if len(parts) != 2 * count:
        raise _err("sparse map does not match GNU.sparse.numblocks", who)
    return [(_go_parse_int(parts[i], who), _go_parse_int(parts[i + 1], who)) for i in range(0, len(parts), 2)]


class _SeekableSource(ByteSource, Protocol):
    def seek(self, offset: int, whence: int = 0, /) -> int: ...


def _seekable(stream: ByteSource) -> TypeGuard[_SeekableSource]:
    seekable = getattr(stream, "seekable", None)
    try:
        return seekable is not None and bool(seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _readinto(stream: ByteSource, view: memoryview) -> int:
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        n = readinto(view)
        return int(n or 0)
    data = stream.read(len(view))
    view[: len(data)] = data
    return len(data)


def _clean_components(name: str) -> list[str]:
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            else:
                out.append("..")
        else:
            out.append(part)
    return out


def clean_path(name: str) -> str:
    """Go ``path.Clean("/" + name)`` without the leading slash: the key of an entry under its root.

    ``"./a/../b/"`` gives ``"b"``; the root itself (``"./"``, ``"/"``) gives ``""``. ``..`` components
    that would climb above the root are dropped, so call :func:`check_safe` first to reject them.
    """
    return "/".join(p for p in _clean_components(name.lstrip("/")) if p != "..")


def check_safe(name: str) -> None:
    """Raise :class:`FormatError` if ``name`` climbs out of its root through ``..`` components."""
    parts = _clean_components(name.lstrip("/"))
    if parts and parts[0] == "..":
        raise FormatError("tar: path escapes the root", entry=name)
    if "\x00" in name:
        raise FormatError("tar: path contains NUL", entry=name)
