"""The TOC (``stargz.index.json``): entry model, JSON encoding and decoding."""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Final

from accel.errors import FormatError

TOC_NAME: Final = "stargz.index.json"
PREFETCH_LANDMARK: Final = ".prefetch.landmark"
NO_PREFETCH_LANDMARK: Final = ".no.prefetch.landmark"
LANDMARK_CONTENTS: Final = b"\x0f"
EMPTY_DIGEST: Final = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
# Tar typeflags eStargz carries and their TOC type.
TAR_TYPES: Final = {
    b"0": "reg", b"1": "hardlink", b"2": "symlink", b"3": "char", b"4": "block", b"5": "dir", b"6": "fifo",
}  # fmt: skip
ENTRY_TYPES: Final = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"})

# Go's struct field order; every key but name/type is omitempty.
_INT_KEYS: Final = (
    "size",
    "mode",
    "uid",
    "gid",
    "offset",
    "devMajor",
    "devMinor",
    "chunkOffset",
    "chunkSize",
)
_STR_KEYS: Final = ("modtime", "linkName", "userName", "groupName", "digest", "chunkDigest")


@dataclass(slots=True)
class TOCEntry:
    """One TOC entry; zero values mean "absent" exactly as Go's omitempty does."""

    name: str
    type: str
    size: int = 0
    modtime: str = ""
    linkName: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    userName: str = ""
    groupName: str = ""
    offset: int = 0
    devMajor: int = 0
    devMinor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    chunkOffset: int = 0
    chunkSize: int = 0
    chunkDigest: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        for key in (
            "size",
            "modtime",
            "linkName",
            "mode",
            "uid",
            "gid",
            "userName",
            "groupName",
            "offset",
            "devMajor",
            "devMinor",
        ):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.xattrs:
            out["xattrs"] = {k: base64.b64encode(v).decode("ascii") for k, v in self.xattrs.items()}
        for key in ("digest", "chunkOffset", "chunkSize", "chunkDigest"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out

    @property
    def clean_name(self) -> str:
        return clean_name(self.name)


def clean_name(name: str) -> str:
    """Go's ``path.Clean("/"+name)`` without the leading slash, as the reader indexes names."""
    cleaned = posixpath.normpath("/" + name)
    # posixpath keeps a leading "//"; Go collapses it.
    return cleaned.lstrip("/")


def format_modtime(secs: int, nsec: int = 0) -> str:
    """Go's formatModtime: "" when the Unix seconds are 0, else UTC rounded half-up to the second."""
    if secs == 0:
        return ""
    return _format_seconds(secs + (nsec + 500_000_000) // 1_000_000_000)


@functools.lru_cache(maxsize=1 << 14)  # files of a layer share few mtimes; datetime costs ~10 us a call
def _format_seconds(secs: int) -> str:
    try:
        when = _EPOCH + _dt.timedelta(seconds=secs)
    except OverflowError:
        raise FormatError(f"mtime {secs} out of range") from None
    date = f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
    return f"{date}T{when.hour:02d}:{when.minute:02d}:{when.second:02d}Z"


def encode_toc(entries: list[TOCEntry]) -> bytes:
    """Compact JSON of the TOC; readers don't care about formatting and the digest covers these bytes."""
    # Entry by entry (the same bytes as one json.dumps of the document) so that a layer's worth of
    # intermediate dicts never exists at once.
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    body = ",".join([encode(e.to_json()) for e in entries])
    return ('{"version":1,"entries":[' + body + "]}").encode("utf-8")


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if type(value) is not int:
        raise FormatError(f"TOC: {key} is not an integer", entry=where)
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FormatError(f"TOC: {key} is not a string", entry=where)
    return value


def _entry_from_json(raw: Any) -> TOCEntry:
    if not isinstance(raw, dict):
        raise FormatError("TOC: entry is not an object")
    # Go's encoding/json matches keys case-insensitively.
    obj = {k.lower(): v for k, v in raw.items()}
    name = obj.get("name")
    if not isinstance(name, str):
        raise FormatError("TOC: entry without a name")
    entry = TOCEntry(name=name, type=_str(obj, "type", name))
    for key in _INT_KEYS:
        setattr(entry, key, _int(obj, key.lower(), name))
    for key in _STR_KEYS:
        setattr(entry, key, _str(obj, key.lower(), name))
    xattrs = obj.get("xattrs") or {}
    if not isinstance(xattrs, dict):
        raise FormatError("TOC: xattrs is not an object", entry=name)
    for key, value in xattrs.items():
        if not isinstance(value, str):
            raise FormatError(f"TOC: xattr {key!r} is not base64", entry=name)
        try:
            entry.xattrs[key] = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise FormatError(f"TOC: xattr {key!r} is not base64", entry=name) from None
    return entry


def decode_toc(data: bytes) -> list[TOCEntry]:
    """Parse TOC JSON; checks version 1 and the value types, not the structure (see verify)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"TOC: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError("TOC: not a JSON object")
    doc = {k.lower(): v for k, v in doc.items()}
    if doc.get("version") != 1 or type(doc.get("version")) is not int:
        raise FormatError(f"TOC: unsupported version {doc.get('version')!r}")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise FormatError("TOC: entries is not a list")
    return [_entry_from_json(e) for e in entries]
