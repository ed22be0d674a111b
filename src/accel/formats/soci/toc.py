"""zTOC table of contents entries, made from tar entries the way soci's ``toc_builder.go`` does."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from accel.errors import FormatError
from accel.formats.tar import TarEntry

_TYPES = {
    b"0": "reg",
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}


@dataclass(slots=True)
class FileMetadata:
    """One zTOC entry. Strings are ``str`` with undecodable bytes as surrogates (``surrogateescape``)."""

    name: str
    type: str
    uncompressed_offset: int
    uncompressed_size: int
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mod_time: str = "0001-01-01T00:00:00Z"
    devmajor: int = 0
    devminor: int = 0
    # All PAX records of the entry (soci's flatbuffer field is called "xattrs").
    pax_records: dict[str, str] = field(default_factory=dict)


def entry_type(entry: TarEntry) -> str:
    """soci's ``getType``: anything but the seven basic types (e.g. ``g``, ``S``, ``7``) fails the zTOC."""
    kind = _TYPES.get(entry.type)
    if kind is None:
        raise FormatError(f"unsupported tar entry type {entry.type!r} for a zTOC", entry=entry.name)
    if entry.sparse is not None:
        # Go expands PAX sparse files into plain "reg" entries whose stored bytes are not the content,
        # so a lazily loaded file would be wrong: refuse the layer instead.
        raise FormatError("sparse files cannot be indexed by SOCI", entry=entry.name)
    return kind


def metadata_from_entry(entry: TarEntry) -> FileMetadata:
    return FileMetadata(
        name=entry.name,
        type=entry_type(entry),
        uncompressed_offset=entry.data_offset,
        uncompressed_size=entry.size,
        linkname=entry.linkname,
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        # Interned: a layer has few distinct owners and timestamps, and tens of thousands of entries.
        uname=sys.intern(entry.uname),
        gname=sys.intern(entry.gname),
        mod_time=sys.intern(format_time(entry.mtime, entry.mtime_nsec)),
        devmajor=entry.devmajor,
        devminor=entry.devminor,
        pax_records=entry.pax_records,
    )


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (any year, even < 1)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


def format_time(seconds: int, nanoseconds: int = 0) -> str:
    """Go ``time.Time.MarshalText`` in UTC: RFC 3339 with trailing-zero-trimmed nanoseconds.

    Go refuses years outside [0, 9999] and soci ignores that error, writing an empty string; so do we.
    """
    days, rem = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    if not 0 <= year <= 9999:
        return ""
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    frac = f".{nanoseconds:09d}".rstrip("0") if nanoseconds else ""
    return f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}{frac}Z"
