"""Tar header encoding that matches Go's ``archive/tar.Writer`` (Go 1.19) byte for byte.

Go re-encodes every header it writes: it picks USTAR when it can, else PAX, else GNU, following the rules of
``Header.allowedFormats``. A header parsed from a tar keeps its format as a wish (``format``), and its PAX
records are re-emitted. Strings are handled as bytes (Go strings are byte strings): ``str`` values are
encoded as UTF-8 with ``surrogateescape`` so arbitrary bytes survive.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Final

from accel.errors import FormatError

BLOCK: Final = 512
END_OF_ARCHIVE: Final = bytes(2 * BLOCK)

# Format bit set, as in Go.
FORMAT_UNKNOWN: Final = 0
FORMAT_V7: Final = 1
FORMAT_USTAR: Final = 2
FORMAT_PAX: Final = 4
FORMAT_GNU: Final = 8
FORMAT_STAR: Final = 16
_ALL: Final = FORMAT_USTAR | FORMAT_PAX | FORMAT_GNU

_HEADER_ONLY: Final = frozenset(b"12 3 4 5 6".replace(b" ", b""))
_NAME_SIZE: Final = 100
_PREFIX_SIZE: Final = 155
_MAX_SPECIAL: Final = 1 << 20
_BASIC_KEYS: Final = frozenset(
    {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime"}
)
_NS: Final = 1_000_000_000


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


@dataclass(slots=True)
class GoHeader:
    """The fields of Go's ``tar.Header`` the writer uses. Times: Unix nanoseconds, None = zero time."""

    name: str
    typeflag: bytes = b"0"
    linkname: str = ""
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime_ns: int | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    devmajor: int = 0
    devminor: int = 0
    pax_records: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT_UNKNOWN


def padding(size: int) -> bytes:
    """Zero bytes that complete a payload of ``size`` bytes to a block boundary."""
    return bytes(-size % BLOCK)


def _fits_octal(n: int, x: int) -> bool:
    return x >= 0 and (n >= 22 or x < 1 << ((n - 1) * 3))


def _fits_base256(n: int, x: int) -> bool:
    bits = (n - 1) * 8
    return n >= 9 or -(1 << bits) <= x < 1 << bits


def _to_ascii(s: bytes) -> bytes:
    if s.isascii():
        return s
    text = s.decode("utf-8", "replace")
    return bytes(c for c in text.encode("ascii", "ignore") if c != 0)


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    length = len(name)
    if length <= _NAME_SIZE or not name.isascii():
        return None
    if length > _PREFIX_SIZE + 1:
        length = _PREFIX_SIZE + 1
    elif name[length - 1 : length] == b"/":
        length -= 1
    i = name.rfind(b"/", 0, length)
    nlen = len(name) - i - 1
    if i <= 0 or nlen > _NAME_SIZE or nlen == 0 or i > _PREFIX_SIZE:
        return None
    return name[:i], name[i + 1 :]


def _pax_time(ns: int) -> str:
    secs, nsecs = divmod(ns, _NS)
    if nsecs == 0:
        return str(secs)
    sign = ""
    if secs < 0:
        sign, secs, nsecs = "-", -(secs + 1), _NS - nsecs
    return f"{sign}{secs}.{nsecs:09d}".rstrip("0")


def _valid_pax(k: str, v: str) -> bool:
    if not k or "=" in k:
        return False
    if k in ("path", "linkpath", "uname", "gname"):
        return "\x00" not in v
    return "\x00" not in k


def pax_record(key: str, value: str) -> bytes:
    """One ``"%d %s=%s\\n"`` record, as Go formats it."""
    body = b" " + _b(key) + b"=" + _b(value) + b"\n"
    size = len(body) + len(str(len(body)))
    record = str(size).encode() + body
    if len(record) != size:
        record = str(len(record)).encode() + body
    return record


class _Block:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray(BLOCK)

    def string(self, off: int, size: int, s: bytes) -> None:
        self.buf[off : off + min(len(s), size)] = s[:size]
        if len(s) < size:
            self.buf[off + len(s)] = 0
        if len(s) > size and self.buf[off + size - 1] == ord("/"):
            # Go: a truncated V7 path must not look like a directory.
            n = len(s[:size].rstrip(b"/"))
            self.buf[off + n] = 0

    def octal(self, off: int, size: int, x: int) -> None:
        if not _fits_octal(size, x):
            x = 0
        s = format(x, "o").encode()
        if size - len(s) - 1 > 0:
            s = b"0" * (size - len(s) - 1) + s
        self.string(off, size, s)

    def numeric(self, off: int, size: int, x: int) -> None:
        if _fits_octal(size, x):
            self.octal(off, size, x)
        elif _fits_base256(size, x):
            raw = (x & ((1 << (8 * size)) - 1)).to_bytes(size, "big")
            self.buf[off : off + size] = bytes([raw[0] | 0x80]) + raw[1:]
        else:
            self.octal(off, size, 0)

    def finish(self, fmt: int) -> bytes:
        if fmt & FORMAT_GNU:
            self.buf[257:263] = b"ustar "
            self.buf[263:265] = b" \x00"
        else:
            self.buf[257:263] = b"ustar\x00"
            self.buf[263:265] = b"00"
        self.buf[148:156] = b"        "
        self.octal(148, 7, sum(self.buf))
        self.buf[155] = ord(" ")
        return bytes(self.buf)


def _template(h: GoHeader, name: bytes, *, numeric: bool, ascii_only: bool) -> _Block:
    """Go's templateV7Plus: the V7 fields plus uname/gname/devices."""
    blk = _Block()
    num = blk.numeric if numeric else blk.octal

    def text(off: int, size: int, s: bytes) -> None:
        blk.string(off, size, _to_ascii(s) if ascii_only else s)

    blk.buf[156] = h.typeflag[0]
    text(0, 100, name)
    text(157, 100, _b(h.linkname))
    num(100, 8, h.mode)
    num(108, 8, h.uid)
    num(116, 8, h.gid)
    num(124, 12, h.size)
    num(136, 12, (h.mtime_ns or 0) // _NS)
    text(265, 32, _b(h.uname))
    text(297, 32, _b(h.gname))
    num(329, 8, h.devmajor)
    num(337, 8, h.devminor)
    return blk


def _raw_file(name: bytes, data: bytes, flag: bytes, fmt: int) -> bytes:
    name = _to_ascii(name)[:_NAME_SIZE].rstrip(b"/")
    blk = _Block()
    blk.buf[156] = flag[0]
    blk.string(0, 100, name)
    for off in (100, 108, 116):
        blk.octal(off, 8, 0)
    blk.octal(124, 12, len(data))
    blk.octal(136, 12, 0)
    return blk.finish(fmt) + data + padding(len(data))


def _allowed_formats(h: GoHeader) -> tuple[int, dict[str, str]]:
    fmt = _ALL
    pax: dict[str, str] = {}
    prefer_pax = False

    def verify_string(s: str, size: int, key: str) -> None:
        nonlocal fmt
        raw = _b(s)
        too_long = len(raw) > size
        if b"\x00" in raw or (too_long and key not in ("path", "linkpath")):
            fmt &= ~FORMAT_GNU
        if not raw.isascii() or too_long:
            if key != "path" or _split_ustar(raw) is None:
                fmt &= ~FORMAT_USTAR
            if key == "":
                fmt &= ~FORMAT_PAX
            else:
                pax[key] = s
        if key and h.pax_records.get(key) == s:
            pax[key] = s

    def verify_numeric(n: int, size: int, key: str) -> None:
        nonlocal fmt
        if not _fits_base256(size, n):
            fmt &= ~FORMAT_GNU
        if not _fits_octal(size, n):
            fmt &= ~FORMAT_USTAR
            if key == "":
                fmt &= ~FORMAT_PAX
            else:
                pax[key] = str(n)
        if key and h.pax_records.get(key) == str(n):
            pax[key] = str(n)

    def verify_time(ns: int | None, size: int, key: str) -> None:
        nonlocal fmt, prefer_pax
        if ns is None:
            return
        secs = ns // _NS
        if not _fits_base256(size, secs):
            fmt &= ~FORMAT_GNU
        is_mtime = key == "mtime"
        fits = _fits_octal(size, secs)
        if not is_mtime or not fits:
            fmt &= ~FORMAT_USTAR
        if not is_mtime or not fits or ns % _NS:
            prefer_pax = True
            pax[key] = _pax_time(ns)
        if h.pax_records.get(key) == _pax_time(ns):
            pax[key] = _pax_time(ns)

    verify_string(h.name, 100, "path")
    verify_string(h.linkname, 100, "linkpath")
    verify_string(h.uname, 32, "uname")
    verify_string(h.gname, 32, "gname")
    verify_numeric(h.mode, 8, "")
    verify_numeric(h.uid, 8, "uid")
    verify_numeric(h.gid, 8, "gid")
    verify_numeric(h.size, 12, "size")
    verify_numeric(h.devmajor, 8, "")
    verify_numeric(h.devminor, 8, "")
    verify_time(h.mtime_ns, 12, "mtime")
    verify_time(h.atime_ns, 12, "atime")
    verify_time(h.ctime_ns, 12, "ctime")

    if h.typeflag in (b"0", b"3", b"4", b"6", b"S") and h.name.endswith("/"):
        raise FormatError("filename may not have trailing slash", entry=h.name)
    if h.typeflag in (b"x", b"L", b"K", b"g"):
        raise FormatError(f"cannot encode a {h.typeflag!r} header as an entry", entry=h.name)
    if h.typeflag[0] not in _HEADER_ONLY and h.size < 0:
        raise FormatError("negative size", entry=h.name)
    if h.pax_records:
        for k, v in h.pax_records.items():
            if k in pax:
                continue
            if k not in _BASIC_KEYS and not k.startswith("GNU.sparse."):
                pax[k] = v
        fmt &= FORMAT_PAX
    for k, v in pax.items():
        if not _valid_pax(k, v):
            raise FormatError(f"invalid PAX record {k!r}", entry=h.name)
    if h.format != FORMAT_UNKNOWN:
        want = h.format
        if want & FORMAT_PAX and not prefer_pax:
            want |= FORMAT_USTAR
        fmt &= want
    if fmt == FORMAT_UNKNOWN:
        raise FormatError("no tar format can encode this header", entry=h.name)
    return fmt, pax


def encode_header(hdr: GoHeader) -> bytes:
    """The header blocks Go's ``tar.Writer.WriteHeader`` emits for ``hdr`` (payload and padding excluded)."""
    h = GoHeader(**{f: getattr(hdr, f) for f in GoHeader.__slots__})
    if h.typeflag == b"\x00":
        h.typeflag = b"5" if h.name.endswith("/") else b"0"
    if h.format == FORMAT_UNKNOWN:
        if h.mtime_ns is not None:
            h.mtime_ns = (h.mtime_ns + _NS // 2) // _NS * _NS
        h.atime_ns = h.ctime_ns = None
    fmt, pax = _allowed_formats(h)
    name = _b(h.name)
    if fmt & FORMAT_USTAR:
        prefix = b""
        split = _split_ustar(name)
        if split is not None:
            prefix, name = split
        blk = _template(h, name, numeric=False, ascii_only=False)
        blk.string(345, 155, prefix)
        return blk.finish(FORMAT_USTAR)
    if fmt & FORMAT_PAX:
        out = b""
        if pax:
            data = b"".join(pax_record(k, pax[k]) for k in sorted(pax, key=_b))
            if len(data) > _MAX_SPECIAL:
                raise FormatError("PAX header too long", entry=h.name)
            out = _raw_file(_pax_name(name), data, b"x", FORMAT_PAX)
        return out + _template(h, name, numeric=False, ascii_only=True).finish(FORMAT_PAX)
    out = b""
    if len(name) > _NAME_SIZE:
        out += _raw_file(b"././@LongLink", name + b"\x00", b"L", FORMAT_GNU)
    link = _b(h.linkname)
    if len(link) > _NAME_SIZE:
        out += _raw_file(b"././@LongLink", link + b"\x00", b"K", FORMAT_GNU)
    blk = _template(h, name, numeric=True, ascii_only=False)
    if h.atime_ns is not None:
        blk.numeric(345, 12, h.atime_ns // _NS)
    if h.ctime_ns is not None:
        blk.numeric(357, 12, h.ctime_ns // _NS)
    return out + blk.finish(FORMAT_GNU)


def _pax_name(name: bytes) -> bytes:
    """Go's ``path.Join(dir, "PaxHeaders.0", file)`` of ``path.Split(name)``."""
    cut = name.rfind(b"/") + 1
    parts = [p for p in (name[:cut], b"PaxHeaders.0", name[cut:]) if p]
    joined = posixpath.normpath(b"/".join(parts))
    return b"/" + joined.lstrip(b"/") if joined.startswith(b"//") else joined
