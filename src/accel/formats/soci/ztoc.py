"""The zTOC flatbuffer: writer (soci's exact builder call order, for byte identity) and reader."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import flatbuffers
from flatbuffers import number_types as nt
from flatbuffers.table import Table

from accel.errors import FormatError
from accel.formats.soci._fastfb import FastBuilder
from accel.formats.soci.toc import FileMetadata
from accel.formats.tar import decode_name, encode_name

ZTOC_VERSION = "0.9"
ZTOC_MEDIA_TYPE = "application/octet-stream"
GZIP = "gzip"
UNCOMPRESSED = "uncompressed"
_ALGORITHMS = {GZIP: 1, UNCOMPRESSED: 2}
_ALGORITHM_NAMES = {v: k for k, v in _ALGORITHMS.items()}


@dataclass(slots=True)
class Ztoc:
    """A decoded zTOC. ``to_bytes()`` gives the serialized flatbuffer (cached)."""

    version: str
    build_tool_identifier: str
    compressed_archive_size: int
    uncompressed_archive_size: int
    toc: list[FileMetadata]
    compression_algorithm: str
    max_span_id: int
    span_digests: list[str]
    checkpoints: bytes
    _raw: bytes | None = field(default=None, repr=False, compare=False)

    def to_bytes(self) -> bytes:
        if self._raw is None:
            self._raw = marshal(self)
        return self._raw

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def size(self) -> int:
        return len(self.to_bytes())


def _s(value: str) -> bytes:
    return encode_name(value)


def _metadata(b: FastBuilder, me: FileMetadata) -> int:
    name, typ, linkname, uname, gname, mod_time = b.create_strings(
        (_s(me.name), _s(me.type), _s(me.linkname), _s(me.uname), _s(me.gname), _s(me.mod_time))
    )
    xattr_offsets = []
    pax = me.pax_records
    for key in sorted(pax, key=_s) if pax else ():  # Go sorts the raw byte strings
        k, v = b.create_strings((_s(key), _s(pax[key])))
        b.start_object(2)
        b.add_offset(0, k)
        b.add_offset(1, v)
        xattr_offsets.append(b.end_object())
    xattrs = b.offset_vector(xattr_offsets)
    b.start_object(14)
    b.add_fields(
        (
            (0, 0, name),
            (1, 0, typ),
            (2, 8, me.uncompressed_offset),
            (3, 8, me.uncompressed_size),
            (4, 0, linkname),
            (5, 8, me.mode),
            (6, 4, me.uid & 0xFFFFFFFF),  # Go's uint32(int) conversion wraps
            (7, 4, me.gid & 0xFFFFFFFF),
            (8, 0, uname),
            (9, 0, gname),
            (10, 0, mod_time),
            (11, 8, me.devmajor),
            (12, 8, me.devminor),
            (13, 0, xattrs),
        )
    )
    return b.end_object()


def _size_hint(ztoc: Ztoc) -> int:
    """Close to the final size, so the buffer is not regrown (each regrowth copies it)."""
    size = len(ztoc.checkpoints) + 80 * len(ztoc.span_digests) + 1024
    for me in ztoc.toc:
        size += 220 + len(me.name) + len(me.linkname) + len(me.uname) + len(me.gname)
        if me.pax_records:
            size += sum(len(k) + len(v) + 32 for k, v in me.pax_records.items())
    return size


def marshal(ztoc: Ztoc) -> bytes:
    """Serialize in the order of soci's ``ztocToFlatbuffer`` (flatbuffers are built back to front)."""
    return bytes(_build(ztoc))


def serializes_to(ztoc: Ztoc, data: bytes) -> bool:
    """``marshal(ztoc) == data`` without keeping a second copy of a possibly large buffer."""
    return _build(ztoc) == data


def _build(ztoc: Ztoc) -> memoryview:
    if ztoc.compression_algorithm not in _ALGORITHMS:
        raise FormatError(f"unknown zTOC compression algorithm {ztoc.compression_algorithm!r}")
    b = FastBuilder(_size_hint(ztoc))
    version = b.create_string(_s(ztoc.version))
    tool = b.create_string(_s(ztoc.build_tool_identifier))

    offsets = [0] * len(ztoc.toc)
    for i in range(len(ztoc.toc) - 1, -1, -1):
        offsets[i] = _metadata(b, ztoc.toc[i])
    metadata = b.offset_vector(offsets)
    b.start_object(1)
    b.add_offset(0, metadata)
    toc = b.end_object()

    checkpoints = b.create_byte_vector(ztoc.checkpoints)
    digests = b.offset_vector([b.create_string(_s(d)) for d in ztoc.span_digests])
    b.start_object(4)
    b.add_int32(1, ztoc.max_span_id)
    b.add_offset(2, digests)
    b.add_offset(3, checkpoints)
    b.add_int8(0, _ALGORITHMS[ztoc.compression_algorithm], 1)
    info = b.end_object()

    b.start_object(6)
    b.add_offset(0, version)
    b.add_offset(1, tool)
    b.add_offset(4, toc)
    b.add_int64(2, ztoc.compressed_archive_size)
    b.add_int64(3, ztoc.uncompressed_archive_size)
    b.add_offset(5, info)
    return b.finish(b.end_object())


# -- reader -------------------------------------------------------------------------------------------


class _T:
    """Minimal accessor over a flatbuffers table."""

    __slots__ = ("t",)

    def __init__(self, buf: bytes, pos: int) -> None:
        self.t = Table(buf, pos)

    def _off(self, slot: int) -> int:
        return int(self.t.Offset(4 + 2 * slot))

    def string(self, slot: int) -> str:
        off = self._off(slot)
        return decode_name(bytes(self.t.String(off + self.t.Pos))) if off else ""

    def scalar(self, slot: int, flags: type, default: int) -> int:
        off = self._off(slot)
        return int(self.t.Get(flags, off + self.t.Pos)) if off else default

    def table(self, slot: int) -> _T | None:
        off = self._off(slot)
        if not off:
            return None
        return _T(self.t.Bytes, self.t.Indirect(off + self.t.Pos))

    def vector(self, slot: int) -> tuple[int, int]:
        off = self._off(slot)
        if not off:
            return 0, 0
        return int(self.t.Vector(off)), int(self.t.VectorLen(off))

    def tables(self, slot: int) -> list[_T]:
        start, n = self.vector(slot)
        return [_T(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(n)]

    def strings(self, slot: int) -> list[str]:
        start, n = self.vector(slot)
        return [decode_name(bytes(self.t.String(start + 4 * i))) for i in range(n)]

    def byte_vector(self, slot: int) -> bytes:
        start, n = self.vector(slot)
        return bytes(self.t.Bytes[start : start + n])


def read_ztoc(data: bytes) -> Ztoc:
    """Decode a zTOC; FormatError if it is malformed or entries overlap (soci's ``ErrInvalidTOCEntry``)."""
    try:
        root = _T(data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
        toc_table = root.table(4)
        entries = []
        for t in toc_table.tables(0) if toc_table else []:
            entries.append(
                FileMetadata(
                    name=t.string(0),
                    type=t.string(1),
                    uncompressed_offset=t.scalar(2, nt.Int64Flags, 0),
                    uncompressed_size=t.scalar(3, nt.Int64Flags, 0),
                    linkname=t.string(4),
                    mode=t.scalar(5, nt.Int64Flags, 0),
                    uid=t.scalar(6, nt.Uint32Flags, 0),
                    gid=t.scalar(7, nt.Uint32Flags, 0),
                    uname=t.string(8),
                    gname=t.string(9),
                    mod_time=t.string(10),
                    devmajor=t.scalar(11, nt.Int64Flags, 0),
                    devminor=t.scalar(12, nt.Int64Flags, 0),
                    pax_records={x.string(0): x.string(1) for x in t.tables(13)},
                )
            )
        info = root.table(5)
        if info is None:
            raise FormatError("zTOC has no compression_info")
        algorithm = _ALGORITHM_NAMES.get(info.scalar(0, nt.Int8Flags, 1))
        if algorithm is None:
            raise FormatError("zTOC has an unknown compression algorithm")
        ztoc = Ztoc(
            version=root.string(0),
            build_tool_identifier=root.string(1),
            compressed_archive_size=root.scalar(2, nt.Int64Flags, 0),
            uncompressed_archive_size=root.scalar(3, nt.Int64Flags, 0),
            toc=entries,
            compression_algorithm=algorithm,
            max_span_id=info.scalar(1, nt.Int32Flags, 0),
            span_digests=info.strings(2),
            checkpoints=info.byte_vector(3),
        )
    except FormatError:
        raise
    except Exception as exc:  # a corrupt buffer makes the flatbuffers runtime fail in many ways
        raise FormatError(f"cannot decode zTOC: {exc}") from exc
    check_toc_order(ztoc.toc)
    ztoc._raw = data if isinstance(data, bytes) else bytes(data)
    return ztoc


def check_toc_order(toc: list[FileMetadata]) -> None:
    """soci's reader check: sorted by data offset, no entry's data may overlap the next entry's header."""
    next_header = 0
    for me in sorted(toc, key=lambda m: m.uncompressed_offset):
        if next_header > me.uncompressed_offset:
            raise FormatError("zTOC entries overlap (invalid toc entry)", entry=me.name)
        end = me.uncompressed_offset + me.uncompressed_size
        next_header = end + (-end % 512)
