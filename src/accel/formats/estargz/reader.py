"""Reading and verifying eStargz blobs (gzip) and stargz-snapshotter zstd:chunked blobs.

``verify`` makes the checks Go's ``estargz.Open`` + ``VerifyTOC`` make, reads every chunk through its own
member and checks ``chunkDigest``/``digest``, then decompresses the whole blob as an ordinary layer and
compares every tar entry with the TOC.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from typing import BinaryIO, Literal, cast

import zlib_ng.zlib_ng as _zng
import zstandard

from accel.errors import FormatError
from accel.formats.chunked import BlobReader, BlobStream, VerifyResult, as_blob
from accel.formats.estargz.footer import FOOTER_SIZE, LEGACY_FOOTER_SIZE, parse_footer, parse_legacy_footer
from accel.formats.estargz.toc import (
    ENTRY_TYPES,
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TAR_TYPES,
    TOC_NAME,
    TOCEntry,
    clean_name,
    decode_toc,
    format_modtime,
)
from accel.formats.layercodec import TeeStream
from accel.formats.tar import TarEntry, TarReader

SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
STARGZ_ZSTD_MAGIC = b"GnUlInUx"
STARGZ_ZSTD_FOOTER_SIZE = 40
_READ = 1 << 20
_ZNG_ERROR = cast("type[BaseException]", _zng.error)
_LANDMARK_DIGEST = "sha256:" + hashlib.sha256(LANDMARK_CONTENTS).hexdigest()


@dataclass(slots=True)
class Blob:
    """An opened blob: its kind, TOC and where the TOC is."""

    kind: Literal["gzip", "zstd"]
    reader: BlobReader
    toc_offset: int
    toc_json: bytes
    toc_digest: str
    entries: list[TOCEntry]


def _gunzip_first_member(data: bytes) -> bytes:
    obj = _zng.decompressobj(31)
    try:
        out = obj.decompress(data)
    except _ZNG_ERROR as exc:
        raise FormatError(f"TOC member: {exc}") from None
    if not obj.eof:
        raise FormatError("TOC member is truncated")
    return out


def _toc_from_gzip(blob: BlobReader, toc_offset: int, footer_size: int) -> bytes:
    end = blob.size - footer_size
    if not 0 <= toc_offset < end:
        raise FormatError(f"TOC offset {toc_offset} outside the blob")
    plain = _gunzip_first_member(blob.read_at(toc_offset, end - toc_offset))
    reader = TarReader(io.BytesIO(plain))
    entry = next(reader, None)
    if entry is None or entry.name != TOC_NAME:
        raise FormatError(f"the TOC member does not start with {TOC_NAME}")
    return reader.read()


def is_estargz(blob: BlobReader | bytes | BinaryIO) -> bool:
    """True when the blob ends in an eStargz footer (gzip, legacy or stargz zstd) whose TOC can be parsed."""
    try:
        open_blob(blob)
    except FormatError:
        return False
    return True


def open_blob(blob: BlobReader | bytes | BinaryIO) -> Blob:
    """Parse the footer and the TOC the way ``estargz.Open`` does (gzip, legacy gzip, then stargz zstd)."""
    reader = as_blob(blob)
    size = reader.size
    errors: list[str] = []
    for footer_size, parse in ((FOOTER_SIZE, parse_footer), (LEGACY_FOOTER_SIZE, parse_legacy_footer)):
        if size < footer_size:
            continue
        try:
            toc_offset = parse(reader.read_at(size - footer_size, footer_size))
            toc_json = _toc_from_gzip(reader, toc_offset, footer_size)
        except FormatError as exc:
            errors.append(exc.message)
            continue
        return _opened("gzip", reader, toc_offset, toc_json, hashlib.sha256(toc_json).hexdigest())
    if size >= STARGZ_ZSTD_FOOTER_SIZE + 8:
        tail = reader.read_at(size - STARGZ_ZSTD_FOOTER_SIZE - 8, STARGZ_ZSTD_FOOTER_SIZE + 8)
        if tail[:8] == SKIPPABLE_MAGIC + struct.pack("<I", 40) and tail[40:] == STARGZ_ZSTD_MAGIC:
            toc_offset, clen, ulen, _kind = struct.unpack("<QQQQ", tail[8:40])
            if toc_offset + clen > size:
                raise FormatError("zstd:chunked footer: TOC outside the blob")
            try:
                toc_json = zstandard.ZstdDecompressor().decompress(
                    reader.read_at(toc_offset, clen), max_output_size=ulen
                )
            except zstandard.ZstdError as exc:
                raise FormatError(f"zstd:chunked TOC: {exc}") from None
            return _opened("zstd", reader, toc_offset, toc_json, hashlib.sha256(toc_json).hexdigest())
        errors.append("no zstd:chunked (stargz) footer")
    raise FormatError("not an eStargz blob: " + "; ".join(errors or ["blob too small"]))


def _opened(kind: Literal["gzip", "zstd"], reader: BlobReader, off: int, toc_json: bytes, hexd: str) -> Blob:
    return Blob(kind, reader, off, toc_json, "sha256:" + hexd, decode_toc(toc_json))


def _decompress_range(blob: Blob, start: int, end: int, want: int) -> bytes:
    """The first ``want`` uncompressed bytes of the members in ``[start, end)``."""
    out = bytearray()
    pos = start
    if blob.kind == "zstd":
        data = blob.reader.read_at(start, end - start)
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        try:
            while len(out) < want:
                piece = reader.read(want - len(out))
                if not piece:
                    break
                out += piece
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd frame at {start}: {exc}") from None
        return bytes(out)
    obj = _zng.decompressobj(31)
    pending = b""
    while len(out) < want:
        if not pending:
            if pos >= end:
                break
            pending = blob.reader.read_at(pos, min(_READ, end - pos))
            pos += len(pending)
            if not pending:
                break
        try:
            out += obj.decompress(pending, want - len(out))
        except _ZNG_ERROR as exc:
            raise FormatError(f"gzip member at {start}: {exc}") from None
        pending = obj.unconsumed_tail
        if obj.eof:
            pending = obj.unused_data + pending
            obj = _zng.decompressobj(31)
    return bytes(out)


def _chunk_size(entry: TOCEntry, owner: TOCEntry) -> int:
    return entry.chunkSize or owner.size - entry.chunkOffset


def _check_structure(blob: Blob) -> dict[str, TOCEntry]:
    """VerifyTOC's offset/chunkDigest rules plus the structural rules of the format."""
    seen_offsets: set[int] = set()
    by_name: dict[str, TOCEntry] = {}
    landmarks = 0
    owner: TOCEntry | None = None
    covered = 0
    for entry in blob.entries:
        if entry.type not in ENTRY_TYPES:
            raise FormatError(f"TOC: invalid type {entry.type!r}", entry=entry.name)
        if entry.type in ("reg", "chunk"):
            if entry.offset in seen_offsets:
                raise FormatError(f"TOC: offset {entry.offset} found twice", entry=entry.name)
            if entry.type == "chunk" or entry.size > 0:
                seen_offsets.add(entry.offset)
                if not entry.chunkDigest:
                    raise FormatError("TOC: no chunkDigest", entry=entry.name)
                if not 0 <= entry.offset < blob.toc_offset:
                    raise FormatError(f"TOC: offset {entry.offset} outside the payload", entry=entry.name)
        if entry.type == "chunk":
            if owner is None or entry.chunkOffset != covered:
                raise FormatError("TOC: chunk is not contiguous with its file", entry=entry.name)
            covered += _chunk_size(entry, owner)
            continue
        if owner is not None and covered != owner.size:
            raise FormatError(f"TOC: chunks cover {covered} of {owner.size} bytes", entry=owner.name)
        owner, covered = None, 0
        name = clean_name(entry.name)
        if name in by_name:
            raise FormatError("TOC: duplicate name", entry=entry.name)
        by_name[name] = entry
        if name in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK):
            landmarks += 1
            if entry.type != "reg" or entry.size != 1 or entry.digest != _LANDMARK_DIGEST:
                raise FormatError("landmark is not one 0x0f byte", entry=entry.name)
        if entry.type == "reg" and entry.size > 0:
            owner, covered = entry, _chunk_size(entry, entry)
    if owner is not None and covered != owner.size:
        raise FormatError(f"TOC: chunks cover {covered} of {owner.size} bytes", entry=owner.name)
    if landmarks != 1:
        raise FormatError(f"TOC: {landmarks} landmarks, want exactly one")
    for entry in by_name.values():
        if entry.type == "hardlink" and clean_name(entry.linkName) not in by_name:
            raise FormatError(f"hardlink target {entry.linkName!r} not in the TOC", entry=entry.name)
    return by_name


def _member_ends(blob: Blob) -> dict[int, int]:
    """Where each chunk's compressed member(s) end: at the next chunk's offset, the last one at the TOC."""
    offsets = sorted(
        {e.offset for e in blob.entries if e.type == "chunk" or (e.type == "reg" and e.size > 0)}
    )
    return dict(zip(offsets, [*offsets[1:], blob.toc_offset], strict=True))


def _read_chunk(blob: Blob, entry: TOCEntry, owner: TOCEntry, ends: dict[int, int]) -> bytes:
    """One chunk of ``owner`` through its own member(s), checked against its chunkDigest."""
    size = _chunk_size(entry, owner)
    try:
        data = _decompress_range(blob, entry.offset, ends[entry.offset], size)
    except FormatError as exc:
        raise FormatError(f"chunk at {entry.chunkOffset}: {exc.reason}", entry=owner.name) from None
    if len(data) != size:
        raise FormatError(f"chunk at {entry.chunkOffset} is short", entry=owner.name)
    if "sha256:" + hashlib.sha256(data).hexdigest() != entry.chunkDigest:
        raise FormatError(f"chunk at {entry.chunkOffset} does not match chunkDigest", entry=owner.name)
    return data


def _check_chunks(blob: Blob) -> tuple[int, int]:
    """Read every chunk through its own member(s) and check chunkDigest and each file's digest."""
    ends = _member_ends(blob)
    chunks = chunk_bytes = 0
    owner: TOCEntry | None = None
    whole = hashlib.sha256()
    for entry in [*blob.entries, None]:
        if entry is None or entry.type != "chunk":
            if owner is not None and "sha256:" + whole.hexdigest() != owner.digest:
                raise FormatError("file content does not match its digest", entry=owner.name)
            owner = None
            if entry is None or entry.type != "reg" or entry.size == 0:
                continue
            owner, whole = entry, hashlib.sha256()
        assert owner is not None
        data = _read_chunk(blob, entry, owner, ends)
        whole.update(data)
        chunks += 1
        chunk_bytes += len(data)
    return chunks, chunk_bytes


def read_file(blob: Blob, name: str) -> bytes:
    """A regular file's content through the TOC, reading only its chunks' members (what a lazy reader
    fetches with ranged requests); each chunk is checked against its chunkDigest, the whole against its
    digest. A hard link is followed to its target."""
    wanted = clean_name(name)
    position = {clean_name(e.name): i for i, e in enumerate(blob.entries) if e.type != "chunk"}
    index = position.get(wanted)
    if index is not None and blob.entries[index].type == "hardlink":
        index = position.get(clean_name(blob.entries[index].linkName))
    if index is None or blob.entries[index].type != "reg":
        raise FormatError("not a regular file in the TOC", entry=name)
    owner = blob.entries[index]
    if owner.size == 0:
        return b""
    ends = _member_ends(blob)
    parts = [_read_chunk(blob, owner, owner, ends)]
    for entry in blob.entries[index + 1 :]:
        if entry.type != "chunk":
            break
        parts.append(_read_chunk(blob, entry, owner, ends))
    data = b"".join(parts)
    if "sha256:" + hashlib.sha256(data).hexdigest() != owner.digest:
        raise FormatError("file content does not match its digest", entry=owner.name)
    return data


def _plain_stream(blob: Blob) -> BinaryIO:
    raw = io.BufferedReader(BlobStream(blob.reader), _READ)
    if blob.kind == "zstd":
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    from zlib_ng import gzip_ng

    return cast(BinaryIO, gzip_ng.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[no-untyped-call]


def _compare(entry: TOCEntry, tar: TarEntry, xattrs: dict[str, bytes]) -> None:
    kind = TAR_TYPES.get(tar.type, repr(tar.type))
    checks = [
        ("type", entry.type, kind),
        ("mode", entry.mode & 0o7777, tar.mode & 0o7777),
        ("uid", entry.uid, tar.uid),
        ("gid", entry.gid, tar.gid),
        ("modtime", entry.modtime, format_modtime(tar.mtime, tar.mtime_nsec)),
        ("xattrs", entry.xattrs, xattrs),
    ]
    if kind == "reg":
        checks.append(("size", entry.size, tar.size))
    if kind in ("symlink", "hardlink"):
        checks.append(("linkName", entry.linkName, tar.linkname))
    if kind in ("char", "block"):
        checks.append(("device", (entry.devMajor, entry.devMinor), (tar.devmajor, tar.devminor)))
    for what, toc_value, tar_value in checks:
        if toc_value != tar_value:
            raise FormatError(f"TOC {what} {toc_value!r} != tar {what} {tar_value!r}", entry=tar.name)


def _check_stream(blob: Blob, by_name: dict[str, TOCEntry]) -> tuple[str, int, int]:
    stream_hash = hashlib.sha256()
    hashing = TeeStream(_plain_stream(blob), stream_hash.update, "blob")
    reader = TarReader(hashing)
    count = 0
    saw_toc = False
    for tar in reader:
        if saw_toc:
            raise FormatError("entry after the TOC entry", entry=tar.name)
        if blob.kind == "gzip" and tar.name == TOC_NAME:
            if reader.read() != blob.toc_json:
                raise FormatError("the TOC entry differs from the TOC", entry=tar.name)
            saw_toc = True
            continue
        entry = by_name.get(clean_name(tar.name))
        if entry is None:
            raise FormatError("tar entry not in the TOC", entry=tar.name)
        xattrs = {
            k[13:]: v.encode("utf-8", "surrogateescape")
            for k, v in tar.pax_records.items()
            if k.startswith("SCHILY.xattr.")
        }
        _compare(entry, tar, xattrs)
        if tar.type == b"0":
            digest = hashlib.sha256()
            while piece := reader.read(_READ):
                digest.update(piece)
            if "sha256:" + digest.hexdigest() != entry.digest:
                raise FormatError("tar content does not match the TOC digest", entry=tar.name)
        count += 1
    if blob.kind == "gzip" and not saw_toc:
        raise FormatError(f"the stream does not end with {TOC_NAME}")
    if reader.trailer.strip(b"\0"):
        raise FormatError("non-zero bytes after the end of the tar stream")
    if count != len(by_name):
        raise FormatError(f"the stream has {count} entries, the TOC {len(by_name)}")
    return "sha256:" + stream_hash.hexdigest(), hashing.count, count


def verify(blob: BlobReader | bytes | BinaryIO | Blob, toc_digest: str, *, full: bool = True) -> VerifyResult:
    """Verify a blob against its TOC digest (the layer annotation); raises FormatError on any mismatch.

    With ``full`` the whole blob is also decompressed as a plain layer: that gives the diff_id and the
    uncompressed size, and every tar entry is compared with the TOC.
    """
    opened = blob if isinstance(blob, Blob) else open_blob(blob)
    if opened.toc_digest != toc_digest:
        raise FormatError(f"TOC digest {opened.toc_digest} does not match {toc_digest}")
    by_name = _check_structure(opened)
    chunks, chunk_bytes = _check_chunks(opened)
    if not full:
        return VerifyResult("", 0, chunks, chunk_bytes, len(by_name))
    diff_id, size, count = _check_stream(opened, by_name)
    return VerifyResult(diff_id, size, chunks, chunk_bytes, count)
