"""Streaming eStargz builder: a layer (tar, tar+gzip or tar+zstd) in, an eStargz blob out."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, Final

from accel.errors import FormatError
from accel.formats.chunked import (
    DEFAULT_BACKEND,
    Backend,
    BuildResult,
    Compressor,
    MemberWriter,
    SpooledLayer,
    default_threads,
    make_compressor,
)
from accel.formats.estargz.footer import encode_footer
from accel.formats.estargz.toc import (
    EMPTY_DIGEST,
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TAR_TYPES,
    TOC_NAME,
    TOCEntry,
    encode_toc,
    format_modtime,
)
from accel.formats.streams import ByteSink, RewindableSink
from accel.formats.tar import TarEntry, check_safe, clean_path
from accel.formats.tarwriter import END_OF_ARCHIVE, GoHeader, encode_header, padding

DEFAULT_CHUNK_SIZE: Final = 4 << 20
TOC_DIGEST_ANNOTATION: Final = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION: Final = "io.containers.estargz.uncompressed-size"
MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Options of :func:`build`.

    ``backend`` defaults to libdeflate when the system has it, else zlib-ng. ``compression_level`` None
    picks the backend's default (libdeflate 5, the zlib-ng 6/9 mix, isal 2, zstd 3). ``min_chunk_size``
    merges a file's last piece into the previous chunk when it would be shorter (v0.12 readers have no
    ``innerOffset``, so small files never share a member). ``threads`` 0 = the CPUs available to us.
    """

    compression_level: int | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    min_chunk_size: int = 0
    prioritized_files: tuple[str, ...] = ()
    allow_prioritize_not_found: bool = False
    threads: int = 0
    backend: Backend = DEFAULT_BACKEND
    tmpdir: str | None = None


def pax_xattrs(entry: TarEntry) -> dict[str, bytes]:
    """``SCHILY.xattr.*`` PAX records, empty values included (Go's estargz reads PAXRecords, not Xattrs)."""
    return {
        k[13:]: v.encode("utf-8", "surrogateescape")
        for k, v in entry.pax_records.items()
        if k.startswith("SCHILY.xattr.")
    }


def _check_name(name: str, what: str = "name", *, safe: bool = True) -> None:
    if safe:
        check_safe(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} is not valid UTF-8; the TOC cannot carry it", entry=name) from None


def _carried_name(entry: TarEntry) -> str | None:
    """The cleaned path of an entry eStargz can carry; None for a landmark or the TOC of an earlier
    conversion, which are dropped."""
    if entry.type not in TAR_TYPES:
        raise FormatError(f"unsupported tar entry type {entry.type!r}", entry=entry.name)
    if entry.sparse is not None:
        raise FormatError("sparse files are not supported", entry=entry.name)
    _check_name(entry.name)
    if entry.type == b"1":
        _check_name(entry.linkname, "hardlink target")
    elif entry.type == b"2":
        _check_name(entry.linkname, "symlink target", safe=False)
    for key in entry.pax_records:
        _check_name(key, "PAX record", safe=False)
    name = clean_path(entry.name)
    return None if name in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, TOC_NAME) else name


def _check_hardlinks(entries: Iterable[TarEntry], names: set[str]) -> None:
    for entry in entries:
        if entry.type == b"1" and clean_path(entry.linkname) not in names:
            raise FormatError(f"hardlink target {entry.linkname!r} is not in the layer", entry=entry.name)


def index_layer(entries: Iterable[TarEntry]) -> list[TarEntry]:
    """The entries eStargz carries, in original order: checked, landmarks and old TOCs dropped, and for a
    duplicated path only the last entry kept (at its own position)."""
    by_name: dict[str, int] = {}
    kept: list[TarEntry | None] = []
    for entry in entries:
        name = _carried_name(entry)
        if name is None:
            continue
        previous = by_name.get(name)
        if previous is not None:
            kept[previous] = None
        by_name[name] = len(kept)
        kept.append(entry)
    result = [e for e in kept if e is not None]
    _check_hardlinks(result, set(by_name))
    return result


def order_entries(
    entries: list[TarEntry], prioritized: Iterable[str], missed: list[str] | None
) -> tuple[list[TarEntry], list[TarEntry]]:
    """Split into (prioritized entries in landmark order, the rest in original order), as Go's sortEntries
    does, except that a missing parent directory entry is not an error."""
    index = {clean_path(e.name): e for e in entries}
    moved: dict[str, TarEntry] = {}
    visiting: set[str] = set()

    def move(path: str) -> bool:
        name = clean_path(path)
        if name in moved:
            return True
        entry = index.get(name)
        if name == "":
            if entry is not None:
                moved[name] = entry
            return True
        if entry is None or name in visiting:
            return entry is not None
        visiting.add(name)
        move(posixpath.dirname(name))
        if entry.type == b"1":
            move(entry.linkname)
        visiting.discard(name)
        moved.setdefault(name, entry)
        return True

    for path in prioritized:
        if not move(path):
            if missed is None:
                raise FormatError("prioritized file not found in the layer", entry=path)
            missed.append(path)
    first = list(moved.values())
    taken = {id(e) for e in first}
    return first, [e for e in entries if id(e) not in taken]


class _TocBuilder:
    """TOC entries with offsets and chunk digests as member indexes until the members are written."""

    def __init__(self) -> None:
        self.entries: list[TOCEntry] = []
        self._members: list[tuple[TOCEntry, int, bool]] = []  # (entry, member index, is single-chunk reg)
        self._wholes: list[tuple[TOCEntry, hashlib._Hash]] = []  # files of several chunks and their hash
        self._last_uname: dict[int, str] = {}
        self._last_gname: dict[int, str] = {}

    @staticmethod
    def _if_changed(seen: dict[int, str], ident: int, name: str) -> str:
        if not name or seen.get(ident) == name:
            return ""
        seen[ident] = name
        return name

    def add(self, e: TarEntry) -> TOCEntry:
        kind = TAR_TYPES[e.type]
        toc = TOCEntry(
            name=e.name,
            type=kind,
            modtime=format_modtime(e.mtime, e.mtime_nsec),
            mode=e.mode,
            uid=e.uid,
            gid=e.gid,
            userName=self._if_changed(self._last_uname, e.uid, e.uname),
            groupName=self._if_changed(self._last_gname, e.gid, e.gname),
            xattrs=pax_xattrs(e) if e.pax_records else {},
        )
        if kind in ("symlink", "hardlink"):
            toc.linkName = e.linkname
        elif kind in ("char", "block"):
            toc.devMajor, toc.devMinor = e.devmajor, e.devminor
        elif kind == "reg":
            toc.size = e.size
            if e.size == 0:
                toc.digest = EMPTY_DIGEST
        self.entries.append(toc)
        return toc

    def chunk(self, owner: TOCEntry, member: int, offset: int, size: int, full: bool, single: bool) -> None:
        entry = owner if offset == 0 else TOCEntry(name=owner.name, type="chunk", chunkOffset=offset)
        if full:
            entry.chunkSize = size
        if offset != 0:
            self.entries.append(entry)
        self._members.append((entry, member, single))

    def whole(self, entry: TOCEntry) -> hashlib._Hash:
        """The hash the chunks of ``entry`` (a file of several chunks) are fed to, in order."""
        hasher = hashlib.sha256()
        self._wholes.append((entry, hasher))
        return hasher

    def resolve(self, offsets: list[int], digests: list[str | None]) -> None:
        for entry, hasher in self._wholes:
            entry.digest = "sha256:" + hasher.hexdigest()
        for entry, member, single in self._members:
            entry.offset = offsets[member]
            digest = digests[member]
            assert digest is not None
            entry.chunkDigest = digest
            if single:
                entry.digest = digest


def _chunks(size: int, chunk_size: int, min_chunk_size: int) -> list[tuple[int, int, bool]]:
    """(offset, length, is a full chunk) pieces of a file of ``size`` bytes."""
    if size <= chunk_size:
        return [(0, size, size == chunk_size)]
    out: list[tuple[int, int, bool]] = []
    off = 0
    while off < size:
        length = min(chunk_size, size - off)
        rest = size - off - length
        if 0 < rest < min_chunk_size:
            length += rest
        out.append((off, length, length == chunk_size))
        off += length
    return out


def _write_landmark(name: str, writer: MemberWriter, toc: _TocBuilder) -> None:
    landmark = toc.add(_landmark_entry(name))
    writer.append(encode_header(GoHeader(name, size=len(LANDMARK_CONTENTS))))
    member = writer.start_member(LANDMARK_CONTENTS)
    toc.chunk(landmark, member, 0, 1, False, True)
    writer.append(padding(1))


def _write_entry(item: TarEntry, writer: MemberWriter, toc: _TocBuilder, opts: BuildOptions) -> None:
    """The entry's header, then its content as ranges of the writer's source tar, a member per chunk."""
    entry = toc.add(item)
    writer.append(item.raw_header)
    if entry.type != "reg" or item.size == 0:
        return
    pieces = _chunks(item.size, opts.chunk_size, opts.min_chunk_size)
    whole = toc.whole(entry) if len(pieces) > 1 else None
    for off, length, full in pieces:
        member = writer.start_member_range(item.data_offset + off, length, whole)
        toc.chunk(entry, member, off, length, full, whole is None)
    writer.append(padding(item.size))


def _write_indexed(
    layer: SpooledLayer, writer: MemberWriter, toc: _TocBuilder, opts: BuildOptions, missed: list[str] | None
) -> int:
    """Index the whole layer first (duplicates dropped, prioritized files first), then write it."""
    entries = index_layer(layer.entries())
    first, rest = order_entries(entries, opts.prioritized_files, missed)
    count = len(entries)
    del entries
    ordered: list[TarEntry | str] = [NO_PREFETCH_LANDMARK, *rest]
    if opts.prioritized_files:
        ordered = [*first, PREFETCH_LANDMARK, *rest]
    del first, rest
    ordered.reverse()
    while ordered:  # popped, so each parsed entry is freed once its TOC entry is made
        item = ordered.pop()
        if isinstance(item, str):
            _write_landmark(item, writer, toc)
        else:
            _write_entry(item, writer, toc, opts)
    return count


class _DuplicatePath(Exception):
    """A path written already appears again; the earlier entry must not be in the output."""


def _write_streaming(layer: SpooledLayer, writer: MemberWriter, toc: _TocBuilder, opts: BuildOptions) -> int:
    """Write the entries while the tar is parsed, so compression starts at once; the output equals
    :func:`_write_indexed`'s as long as no path is duplicated (then :class:`_DuplicatePath`)."""
    _write_landmark(NO_PREFETCH_LANDMARK, writer, toc)
    names: set[str] = set()
    links: list[TarEntry] = []
    for entry in layer.ready_entries():
        name = _carried_name(entry)
        if name is None:
            continue
        if name in names:
            raise _DuplicatePath(name)
        names.add(name)
        if entry.type == b"1":
            links.append(entry)
        _write_entry(entry, writer, toc, opts)
    _check_hardlinks(links, names)
    return len(names)


def _landmark_entry(name: str) -> TarEntry:
    return TarEntry(
        name=name, type=b"0", linkname="", mode=0, uid=0, gid=0, uname="", gname="", size=1,
        mtime=0, mtime_nsec=0, atime=None, ctime=None, devmajor=0, devminor=0, xattrs={}, pax_records={},
        format="USTAR", header_offset=0, data_offset=0, raw_header=b"", sparse=None, data_length=1,
    )  # fmt: skip


def _rewind_point(dst: ByteSink) -> tuple[RewindableSink, int] | None:
    """``dst`` and where it can be rewound to, if it can."""
    if not isinstance(dst, RewindableSink):
        return None
    try:
        return (dst, dst.tell()) if dst.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def build(src: BinaryIO, dst: ByteSink, options: BuildOptions | None = None) -> BuildResult:
    """Convert the layer read from ``src`` to eStargz written to ``dst`` (gzip members, 51-byte footer).

    An uncompressed regular file is read in place through a memory map: it must not be truncated during
    the build. A seekable ``dst`` is written while the layer is parsed (and rewound if a path turns out
    to be duplicated); otherwise the layer is indexed first.
    """
    opts = options or BuildOptions()
    if opts.backend == "zstd":
        raise FormatError("eStargz is gzip; use accel.formats.zstdchunked for zstd")
    compressor = make_compressor(opts.backend, opts.compression_level)
    return build_layout(
        src, dst, opts, compressor=compressor, write_toc=_write_gzip_toc, media_type=MEDIA_TYPE
    )


TocWriter = Callable[[MemberWriter, Compressor, bytes], dict[str, str]]
"""Ends a blob of the eStargz layout: given the writer (every member written), the compressor and the TOC
JSON, writes the TOC and the footer and returns the annotations beyond the TOC digest and uncompressed
size that describe where they are (none for eStargz itself)."""


def build_layout(
    src: BinaryIO,
    dst: ByteSink,
    opts: BuildOptions,
    *,
    compressor: Compressor,
    write_toc: TocWriter,
    media_type: str,
) -> BuildResult:
    """A blob of the eStargz layout (landmark, entries in TOC order, a member per chunk) with
    ``compressor``'s members, ended by ``write_toc``; ``media_type`` is the layer's. :func:`build` is this
    with gzip and eStargz's own TOC entry and footer; zstd:chunked's stargz flavour uses zstd frames and
    skippable frames. ``opts.backend`` and ``opts.compression_level`` are not read (``compressor`` has
    them)."""
    if opts.chunk_size <= 0:
        raise FormatError(f"chunk size must be positive, got {opts.chunk_size}")
    if opts.min_chunk_size < 0:
        raise FormatError(f"min chunk size must not be negative, got {opts.min_chunk_size}")
    missed: list[str] | None = [] if opts.allow_prioritize_not_found else None
    threads = opts.threads or default_threads()
    rewind = None if opts.prioritized_files else _rewind_point(dst)
    with SpooledLayer(src, tmpdir=opts.tmpdir) as layer:
        writer = MemberWriter(dst, compressor, threads, source=layer.mapped())
        toc = _TocBuilder()
        try:
            if rewind is None:
                count = _write_indexed(layer, writer, toc, opts, missed)
            else:
                try:
                    count = _write_streaming(layer, writer, toc, opts)
                except _DuplicatePath:
                    writer.close()
                    sink, position = rewind
                    sink.seek(position)
                    sink.truncate()
                    writer = MemberWriter(dst, compressor, threads, source=layer.mapped())
                    toc = _TocBuilder()
                    count = _write_indexed(layer, writer, toc, opts, missed)
            writer.drain()
            toc.resolve(writer.offsets, writer.chunk_digests)
            toc_json = encode_toc(toc.entries)
            extra = write_toc(writer, compressor, toc_json)
        finally:
            writer.close()
    toc_digest = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    result = BuildResult(
        toc_digest=toc_digest,
        diff_id="sha256:" + writer.diff.hexdigest(),
        uncompressed_size=writer.uncompressed,
        compressed_size=writer.written,
        digest="sha256:" + writer.blob_hash.hexdigest(),
        media_type=media_type,
        missed_prioritized=missed or [],
        entries=count,
    )
    result.annotations = {
        TOC_DIGEST_ANNOTATION: toc_digest,
        UNCOMPRESSED_SIZE_ANNOTATION: str(result.uncompressed_size),
        **extra,
    }
    return result


def _write_gzip_toc(writer: MemberWriter, compressor: Compressor, toc_json: bytes) -> dict[str, str]:
    raw = encode_header(GoHeader(TOC_NAME, size=len(toc_json))) + toc_json + padding(len(toc_json))
    raw += END_OF_ARCHIVE
    writer.diff.update(raw)
    writer.uncompressed += len(raw)
    toc_offset = writer.written
    writer.write_raw(compressor.compress([raw]))
    writer.write_raw(encode_footer(toc_offset))
    return {}
