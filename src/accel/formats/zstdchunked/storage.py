"""zstd:chunked as containers/storage writes it: the original tar bytes in zstd frames (so the diff_id does
not change), a frame per file chunk, then the manifest (TOC), the tar-split and a 64-byte footer, each in a
zstd skippable frame.

Payloads are cut as containers/storage cuts them (:mod:`.rollsum`): rolling-checksum data chunks and
``zeros`` chunks for runs of at least 1024 zero bytes, so chunk digests match layers built by podman or
buildah and deduplicate against them.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import fastcrc

from accel.errors import FormatError
from accel.formats.chunked import (
    BuildResult,
    Compressor,
    MemberWriter,
    SpooledLayer,
    default_threads,
    make_compressor,
)
from accel.formats.estargz.toc import TAR_TYPES
from accel.formats.streams import ByteSink
from accel.formats.tar import TarEntry, check_safe
from accel.formats.zstdchunked.frames import SKIPPABLE_HEADER_SIZE, StorageFooter, skippable_frame
from accel.formats.zstdchunked.rollsum import (
    HOLE_THRESHOLD,
    MAX_BITS,
    ROLLSUM_BITS,
    Piece,
    Reader,
    SplitFinder,
    chunk_payloads,
)
from accel.formats.zstdchunked.tarsplit import TarSplitWriter

MANIFEST_CHECKSUM_KEY: Final = "io.github.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION_KEY: Final = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_POSITION_KEY: Final = "io.github.containers.zstd-chunked.tarsplit-position"
MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
DEFAULT_CHUNK_SIZE: Final = 1 << ROLLSUM_BITS
ZEROS_THRESHOLD: Final = HOLE_THRESHOLD
_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """``level`` is the zstd level (containers/storage defaults to 10; 3 is several times faster).
    ``chunk_size`` is the average data chunk size, a power of two; the default (64 KiB, 16 bits of the
    rolling checksum) is the one containers/storage uses and the one that deduplicates with its layers."""

    level: int = 3
    chunk_size: int = DEFAULT_CHUNK_SIZE
    threads: int = 0
    tmpdir: str | None = None


def go_time(secs: int, nsec: int) -> str:
    """Go's ``time.Time`` JSON (RFC 3339 with trimmed nanoseconds), in UTC."""
    try:
        when = _EPOCH + _dt.timedelta(seconds=secs)
    except OverflowError:
        raise FormatError(f"time {secs} out of range") from None
    frac = f".{nsec:09d}".rstrip("0") if nsec else ""
    date = f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
    return f"{date}T{when.hour:02d}:{when.minute:02d}:{when.second:02d}{frac}Z"


def file_metadata(e: TarEntry) -> dict[str, Any]:
    """The TOC entry (``minimal.FileMetadata``) of a tar entry, without the data fields."""
    out: dict[str, Any] = {"type": TAR_TYPES[e.type], "name": e.name}
    if e.linkname:
        out["linkName"] = e.linkname
    for key, value in (("mode", e.mode), ("size", e.size), ("uid", e.uid), ("gid", e.gid)):
        if value:
            out[key] = value
    out["modtime"] = go_time(e.mtime, e.mtime_nsec)
    if e.atime is not None:
        out["accesstime"] = go_time(*e.atime)
    if e.ctime is not None:
        out["changetime"] = go_time(*e.ctime)
    if e.devmajor:
        out["devMajor"] = e.devmajor
    if e.devminor:
        out["devMinor"] = e.devminor
    xattrs = {
        k[13:]: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode("ascii")
        for k, v in e.pax_records.items()
        if k.startswith("SCHILY.xattr.")
    }
    if xattrs:
        out["xattrs"] = xattrs
    return out


class _Chunk:
    __slots__ = ("entry", "file_offset", "member", "size", "zeros")

    def __init__(self, entry: dict[str, Any], file_offset: int, member: int, size: int, zeros: bool) -> None:
        self.entry = entry
        self.file_offset = file_offset
        self.member = member
        self.size = size
        self.zeros = zeros


def _checked(entries: Iterable[TarEntry]) -> Iterator[TarEntry]:
    """The entries, each checked before it is passed on."""
    seen: set[str] = set()
    for e in entries:
        if e.type not in TAR_TYPES:
            raise FormatError(f"unsupported tar entry type {e.type!r}", entry=e.name)
        if e.sparse is not None:
            raise FormatError("sparse files are not supported", entry=e.name)
        check_safe(e.name)
        if e.type == b"1":
            check_safe(e.linkname)
        if e.name in seen:
            # containers/storage rejects a TOC with two entries for one path, and this format keeps the
            # tar as it is, so such a layer cannot be carried.
            raise FormatError("duplicate path; zstd:chunked keeps every tar entry", entry=e.name)
        seen.add(e.name)
        try:
            e.name.encode("utf-8")
            e.linkname.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError("name is not valid UTF-8; the TOC cannot carry it", entry=e.name) from None
        yield e


def build_storage(src: BinaryIO, dst: ByteSink, options: StorageOptions | None = None) -> BuildResult:
    """Convert a layer to containers/storage zstd:chunked; the diff_id stays the original tar's."""
    opts = options or StorageOptions()
    bits = rollsum_bits(opts.chunk_size)
    compressor = make_compressor("zstd", opts.level)
    with SpooledLayer(src, tmpdir=opts.tmpdir) as layer:
        writer = MemberWriter(dst, compressor, opts.threads or default_threads(), source=layer.mapped())
        try:
            toc_entries, chunks, ends, tarsplit = _write_frames(layer, writer, SplitFinder(bits))
            writer.drain()
        finally:
            writer.close()
        count = len(toc_entries)  # one per tar entry, until the chunk entries are added
        _resolve(toc_entries, chunks, ends, writer.offsets, writer.chunk_digests, writer.written)
        result = _write_trailer(writer, compressor, toc_entries, tarsplit, layer.size)
        result.entries = count
        return result


def rollsum_bits(chunk_size: int) -> int:
    """The rolling checksum bits for an average chunk size (a power of two)."""
    bits = chunk_size.bit_length() - 1
    if chunk_size <= 1 or chunk_size != 1 << bits or bits > MAX_BITS:
        raise FormatError(
            f"zstd:chunked (containers/storage) chunk size must be a power of two from 2 to {1 << MAX_BITS}"
            f" (the rolling checksum's average chunk size), got {chunk_size}"
        )
    return bits


def _reader(layer: SpooledLayer, e: TarEntry) -> Reader:
    base = e.data_offset

    def read(offset: int, n: int) -> bytes:
        return layer.pread(base + offset, n)

    return read


def _write_frames(
    layer: SpooledLayer, writer: MemberWriter, finder: SplitFinder
) -> tuple[list[dict[str, Any]], list[list[_Chunk]], list[int], TarSplitWriter]:
    """Write the frames while the tar is parsed; the rolling checksum scans a little ahead on its own
    thread, on entries whose content is already readable."""
    tarsplit = TarSplitWriter()
    toc: list[dict[str, Any]] = []
    files: list[list[_Chunk]] = []
    ends: list[int] = []  # member index after each file's last chunk
    prev_end = 0
    # The rolling checksum's thread reads ahead of this loop: both go over entries whose content is ready.
    entries, ahead = itertools.tee(_checked(layer.ready_entries()))
    payloads = ((_reader(layer, e), e.data_length) for e in ahead if e.data_length)
    source = layer.mapped()
    with closing(chunk_payloads(payloads, finder)) as cuts:
        for e in entries:
            raw = layer.pread(prev_end, e.data_offset - prev_end)
            writer.append(raw)
            tarsplit.segment(raw)
            meta = file_metadata(e)
            toc.append(meta)
            prev_end = e.data_offset + e.data_length
            if e.data_length == 0:
                tarsplit.file(e.name.encode("utf-8"), e.size, None)
                continue
            crc: int | None = None
            cut = next(cuts)
            # A single chunk's digest (hashed by the compression worker) is the file's.
            whole = hashlib.sha256() if len(cut) > 1 else None
            pieces: list[_Chunk] = []
            for window in _windows(cut):
                # The CRC and the file digest take a window of chunks at a time (few calls, few GIL
                # handoffs), read before its members are queued so the writer releases those pages after.
                first, last = window[0][0], window[-1][1]
                content = source.slice(e.data_offset + first, last - first)
                crc = fastcrc.crc64.go_iso(content, crc)
                if whole is not None:
                    whole.update(content)
                del content
                for start, end, zeros in window:
                    if zeros:  # from calloc: huge holes cost no resident memory
                        member = writer.start_member(bytes(end - start))
                    else:
                        member = writer.start_member_range(e.data_offset + start, end - start)
                    writer.close_member()
                    pieces.append(_Chunk(meta, start, member, end - start, zeros))
            meta["digest"] = "sha256:" + whole.hexdigest() if whole is not None else None
            files.append(pieces)
            ends.append(pieces[-1].member + 1)
            assert crc is not None
            tarsplit.file(e.name.encode("utf-8"), e.size, crc.to_bytes(8, "big"))
    tail_start = layer.eof_offset
    writer.append(layer.pread(prev_end, layer.size - prev_end))
    tarsplit.segment(layer.pread(prev_end, tail_start - prev_end))
    tarsplit.trailer(layer.pread(tail_start, layer.size - tail_start))
    return toc, files, ends, tarsplit


_WINDOW_BYTES: Final = 1 << 20


def _windows(cut: list[Piece]) -> Iterator[list[Piece]]:
    """Consecutive chunks grouped into runs of about ``_WINDOW_BYTES``."""
    window: list[Piece] = []
    for piece in cut:
        window.append(piece)
        if piece[1] - window[0][0] >= _WINDOW_BYTES:
            yield window
            window = []
    if window:
        yield window


def _resolve(
    toc: list[dict[str, Any]],
    files: list[list[_Chunk]],
    ends: list[int],
    offsets: list[int],
    digests: list[str | None],
    frames_end: int,
) -> None:
    """Fill offsets and chunk fields, and insert the ``chunk`` entries after their file."""
    chunk_entries: dict[int, list[dict[str, Any]]] = {}
    for pieces, end in zip(files, ends, strict=True):
        meta = pieces[0].entry
        if meta["digest"] is None:
            meta["digest"] = digests[pieces[0].member]
        meta["offset"] = offsets[pieces[0].member]
        meta["endOffset"] = offsets[end] if end < len(offsets) else frames_end
        if len(pieces) < 2:
            continue
        extra: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces):
            target = meta if i == 0 else {"type": "chunk", "name": meta["name"]}
            if i:
                target["offset"] = offsets[piece.member]
            target["chunkSize"] = piece.size
            if piece.file_offset:
                target["chunkOffset"] = piece.file_offset
            target["chunkDigest"] = digests[piece.member]
            if piece.zeros:
                target["chunkType"] = "zeros"
            if i:
                extra.append(target)
        chunk_entries[id(meta)] = extra
    if chunk_entries:
        merged: list[dict[str, Any]] = []
        for meta in toc:
            merged.append(meta)
            merged.extend(chunk_entries.get(id(meta), ()))
        toc[:] = merged


def _write_trailer(
    writer: MemberWriter,
    compressor: Compressor,
    toc: list[dict[str, Any]],
    tarsplit: TarSplitWriter,
    uncompressed_size: int,
) -> BuildResult:
    tarsplit_raw = tarsplit.getvalue()
    tarsplit_c = compressor.compress([tarsplit_raw])
    manifest = json.dumps(
        {"version": 1, "entries": toc, "tarSplitDigest": "sha256:" + hashlib.sha256(tarsplit_c).hexdigest()},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    manifest_c = compressor.compress([manifest])
    manifest_offset = writer.written + SKIPPABLE_HEADER_SIZE
    writer.write_raw(skippable_frame(manifest_c))
    tarsplit_offset = writer.written + SKIPPABLE_HEADER_SIZE
    writer.write_raw(skippable_frame(tarsplit_c))
    footer = StorageFooter(
        manifest_offset, len(manifest_c), len(manifest), tarsplit_offset, len(tarsplit_c), len(tarsplit_raw)
    )
    writer.write_raw(skippable_frame(footer.encode()))
    checksum = "sha256:" + hashlib.sha256(manifest_c).hexdigest()
    return BuildResult(
        toc_digest=checksum,
        diff_id="sha256:" + writer.diff.hexdigest(),
        uncompressed_size=uncompressed_size,
        compressed_size=writer.written,
        digest="sha256:" + writer.blob_hash.hexdigest(),
        media_type=MEDIA_TYPE,
        annotations={
            MANIFEST_CHECKSUM_KEY: checksum,
            MANIFEST_POSITION_KEY: f"{manifest_offset}:{len(manifest_c)}:{len(manifest)}:1",
            TARSPLIT_POSITION_KEY: f"{tarsplit_offset}:{len(tarsplit_c)}:{len(tarsplit_raw)}",
        },
    )
