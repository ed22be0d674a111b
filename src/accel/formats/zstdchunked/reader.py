"""Reading and verifying containers/storage zstd:chunked blobs.

``verify_storage`` checks what containers/storage checks before a partial pull (the manifest checksum, the
tar-split digest recorded in the TOC, that TOC and tar-split describe the same entries with the same
metadata) and then reassembles the tar from the tar-split and the file frames, checking every chunk
digest, file digest and CRC-64, and that the result equals the blob decompressed as a plain layer.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import fastcrc
import zstandard

from accel.errors import FormatError
from accel.formats.chunked import BlobReader, BlobStream, VerifyResult, as_blob
from accel.formats.tar import TarReader, clean_path
from accel.formats.zstdchunked.frames import (
    SKIPPABLE_HEADER_SIZE,
    SKIPPABLE_MAGIC,
    STORAGE_FOOTER_SIZE,
    StorageFooter,
)
from accel.formats.zstdchunked.storage import MANIFEST_POSITION_KEY, TARSPLIT_POSITION_KEY, file_metadata
from accel.formats.zstdchunked.tarsplit import FILE_TYPE, TarSplitEntry, parse_tarsplit

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_Meta = dict[str, Any]
_DATA_KEYS = ("digest", "offset", "endOffset", "chunkSize", "chunkOffset", "chunkDigest", "chunkType")
_READ = 1 << 20


@dataclass(slots=True)
class StorageBlob:
    reader: BlobReader
    footer: StorageFooter
    manifest_compressed: bytes
    toc: dict[str, Any]
    tarsplit_compressed: bytes
    tarsplit: bytes

    @property
    def entries(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.toc["entries"])


def _decompress(data: bytes, size: int, what: str) -> bytes:
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: {exc}") from None
    if len(out) != size:
        raise FormatError(f"{what}: {len(out)} bytes, footer says {size}")
    return out


def _position(value: str, parts: int, what: str) -> list[int]:
    try:
        fields = [int(x) for x in value.split(":")]
    except ValueError:
        raise FormatError(f"bad {what} annotation {value!r}") from None
    if len(fields) != parts:
        raise FormatError(f"bad {what} annotation {value!r}")
    return fields


def is_storage_zstdchunked(blob: BlobReader | bytes | BinaryIO) -> bool:
    reader = as_blob(blob)
    if reader.size < STORAGE_FOOTER_SIZE + SKIPPABLE_HEADER_SIZE:
        return False
    tail = reader.read_at(reader.size - STORAGE_FOOTER_SIZE - 8, STORAGE_FOOTER_SIZE + 8)
    return tail[:4] == SKIPPABLE_MAGIC and tail[8 + 56 :] == b"GNUlInUx"


def open_storage_blob(
    blob: BlobReader | bytes | BinaryIO, annotations: dict[str, str] | None = None
) -> StorageBlob:
    """Locate manifest and tar-split from the annotations (as containers/storage does) or the footer."""
    reader = as_blob(blob)
    if annotations and MANIFEST_POSITION_KEY in annotations and TARSPLIT_POSITION_KEY in annotations:
        moff, mclen, mulen, mtype = _position(annotations[MANIFEST_POSITION_KEY], 4, "manifest-position")
        toff, tclen, tulen = _position(annotations[TARSPLIT_POSITION_KEY], 3, "tarsplit-position")
        if mtype != 1:
            raise FormatError(f"unknown manifest type {mtype}")
        footer = StorageFooter(moff, mclen, mulen, toff, tclen, tulen)
    else:
        if not is_storage_zstdchunked(reader):
            raise FormatError("not a zstd:chunked (containers/storage) blob: no 64-byte footer")
        footer = StorageFooter.parse(reader.read_at(reader.size - STORAGE_FOOTER_SIZE, STORAGE_FOOTER_SIZE))
    for off, length in ((footer.manifest_offset, footer.manifest_compressed),
                        (footer.tarsplit_offset, footer.tarsplit_compressed)):  # fmt: skip
        if off < SKIPPABLE_HEADER_SIZE or off + length > reader.size:
            raise FormatError("zstd:chunked: manifest or tar-split outside the blob")
    manifest_c = reader.read_at(footer.manifest_offset, footer.manifest_compressed)
    tarsplit_c = reader.read_at(footer.tarsplit_offset, footer.tarsplit_compressed)
    manifest = _decompress(manifest_c, footer.manifest_uncompressed, "manifest")
    tarsplit = _decompress(tarsplit_c, footer.tarsplit_uncompressed, "tar-split")
    try:
        toc = json.loads(manifest)
    except ValueError as exc:
        raise FormatError(f"manifest: invalid JSON: {exc}") from None
    if not isinstance(toc, dict) or toc.get("version") != 1 or not isinstance(toc.get("entries"), list):
        raise FormatError("manifest: not a version 1 TOC")
    return StorageBlob(reader, footer, manifest_c, toc, tarsplit_c, tarsplit)


def _frames(reader: BlobReader, start: int, end: int, want: int, name: str) -> bytes:
    if not 0 <= start <= end <= reader.size:
        raise FormatError(f"frame range {start}..{end} outside the blob", entry=name)
    data = reader.read_at(start, end - start)
    out = bytearray()
    stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    try:
        while len(out) < want and (piece := stream.read(want - len(out))):
            out += piece
    except zstandard.ZstdError as exc:
        raise FormatError(f"frames at {start}: {exc}") from None
    return bytes(out)


def _index(
    entries: list[dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    by_name: dict[str, dict[str, Any]] = {}
    chunks: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, Any] | None = None
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise FormatError("manifest: malformed entry")
        if e.get("type") == "chunk":
            if owner is None or owner["name"] != e["name"]:
                raise FormatError("manifest: chunk does not follow its file", entry=e["name"])
            chunks[owner["name"]].append(e)
            continue
        if e["name"] in by_name:
            raise FormatError("manifest: duplicate entries for a path", entry=e["name"])
        by_name[e["name"]] = e
        owner = e if e.get("type") == "reg" else None
        if owner is not None:
            chunks[e["name"]] = [e]
    return by_name, chunks


def _file_content(blob: StorageBlob, meta: dict[str, Any], pieces: list[dict[str, Any]]) -> bytes:
    name, size = meta["name"], meta.get("size", 0)
    start, end = meta.get("offset", 0), meta.get("endOffset", 0)
    data = _frames(blob.reader, start, end, size, name)
    if len(data) != size:
        raise FormatError(f"frames hold {len(data)} of {size} bytes", entry=name)
    if "sha256:" + hashlib.sha256(data).hexdigest() != meta.get("digest"):
        raise FormatError("content does not match the TOC digest", entry=name)
    if len(pieces) > 1:
        covered = 0
        for i, piece in enumerate(pieces):
            if piece.get("chunkOffset", 0) != covered:
                raise FormatError("chunks are not contiguous", entry=name)
            length = piece.get("chunkSize", 0)
            chunk_end = pieces[i + 1]["offset"] if i + 1 < len(pieces) else end
            chunk = _frames(blob.reader, piece["offset"], chunk_end, length, name)
            if chunk != data[covered : covered + length]:
                raise FormatError(f"chunk at {covered} does not read back from its own frames", entry=name)
            if "sha256:" + hashlib.sha256(chunk).hexdigest() != piece.get("chunkDigest"):
                raise FormatError(f"chunk at {covered} does not match chunkDigest", entry=name)
            if piece.get("chunkType") == "zeros" and chunk.strip(b"\0"):
                raise FormatError(f"zeros chunk at {covered} is not all zeros", entry=name)
            covered += length
        if covered != size:
            raise FormatError(f"chunks cover {covered} of {size} bytes", entry=name)
    return data


def read_file(blob: StorageBlob, name: str) -> bytes:
    """A regular file's content through the manifest, reading only its frames (what a partial pull
    fetches with ranged requests), checked against its digest. A hard link is followed to its target."""
    by_name = {clean_path(e["name"]): e for e in blob.entries if e.get("type") != "chunk"}
    meta = by_name.get(clean_path(name))
    if meta is not None and meta.get("type") == "hardlink":
        meta = by_name.get(clean_path(meta.get("linkName", "")))
    if meta is None or meta.get("type") != "reg":
        raise FormatError("not a regular file in the manifest", entry=name)
    size = meta.get("size", 0)
    if size == 0:
        return b""
    data = _frames(blob.reader, meta.get("offset", 0), meta.get("endOffset", 0), size, meta["name"])
    if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != meta.get("digest"):
        raise FormatError("content does not match the TOC digest", entry=meta["name"])
    return data


def _reassemble(blob: StorageBlob, by_name: dict[str, dict[str, Any]], chunks: dict[str, list[dict[str, Any]]]
                ) -> Iterator[bytes]:  # fmt: skip
    for item in parse_tarsplit(blob.tarsplit):
        if item.type != FILE_TYPE:
            assert item.payload is not None
            yield item.payload
            continue
        yield from _file_bytes(blob, item, by_name, chunks)


def _file_bytes(
    blob: StorageBlob,
    item: TarSplitEntry,
    by_name: dict[str, dict[str, Any]],
    chunks: dict[str, list[dict[str, Any]]],
) -> Iterator[bytes]:
    name = item.name.decode("utf-8", "surrogateescape")
    meta = by_name.get(name)
    if meta is None:
        raise FormatError("tar-split entry missing from the TOC", entry=name)
    if item.size == 0 or meta.get("type") != "reg":
        return
    data = _file_content(blob, meta, chunks.get(name, [meta]))
    if item.payload != fastcrc.crc64.go_iso(data).to_bytes(8, "big"):
        raise FormatError("content does not match the tar-split CRC-64", entry=name)
    yield data


class _Reassembled(io.RawIOBase):
    """The reassembled tar as a stream; hashes it and compares it with ``expect`` (the plain layer)."""

    def __init__(self, pieces: Iterator[bytes], expects: list[BinaryIO]) -> None:
        self._pieces = pieces
        self._buf = b""
        self._expects = expects
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer, /) -> int:
        while not self._buf:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buf = piece
        view = memoryview(buf).cast("B")
        n = min(len(view), len(self._buf))
        data, self._buf = self._buf[:n], self._buf[n:]
        for expect in self._expects:
            other = expect.read(n)
            if other != data:
                raise FormatError(f"reassembled tar differs from the layer near byte {self.count}")
        self.hash.update(data)
        self.count += n
        view[:n] = data
        return n


def verify_storage(
    blob: BlobReader | bytes | BinaryIO | StorageBlob,
    manifest_checksum: str,
    *,
    annotations: dict[str, str] | None = None,
    original: BinaryIO | None = None,
) -> VerifyResult:
    """Verify a containers/storage zstd:chunked blob; raises FormatError on the first mismatch.

    ``original`` (the uncompressed source tar), when given, must equal the reassembled tar byte for byte.
    """
    opened = blob if isinstance(blob, StorageBlob) else open_storage_blob(blob, annotations)
    actual = "sha256:" + hashlib.sha256(opened.manifest_compressed).hexdigest()
    if actual != manifest_checksum:
        raise FormatError(f"manifest checksum {actual} does not match {manifest_checksum}")
    if opened.toc.get("tarSplitDigest") != "sha256:" + hashlib.sha256(opened.tarsplit_compressed).hexdigest():
        raise FormatError("tar-split digest does not match the TOC")
    by_name, chunks = _index(opened.entries)
    plain = zstandard.ZstdDecompressor().stream_reader(
        io.BufferedReader(BlobStream(opened.reader), _READ), read_across_frames=True
    )
    expects = [cast(BinaryIO, plain)] + ([original] if original is not None else [])
    stream = _Reassembled(_reassemble(opened, by_name, chunks), expects)
    reader = TarReader(stream)
    seen = 0
    nchunks = chunk_bytes = 0
    for entry in reader:
        meta = by_name.get(entry.name)
        if meta is None:
            raise FormatError("tar entry missing from the TOC", entry=entry.name)
        expected = file_metadata(entry)
        got = {k: v for k, v in meta.items() if k not in _DATA_KEYS}
        if got != expected:
            diff = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
            raise FormatError(f"TOC and tar-split metadata differ in {', '.join(diff)}", entry=entry.name)
        seen += 1
        if entry.type == b"0" and entry.size:
            nchunks += len(chunks.get(entry.name, [meta]))
            chunk_bytes += entry.size
    _ = reader.trailer  # drain to the end so every byte is compared
    for expect in expects:
        if expect.read(1):
            raise FormatError("the layer is longer than the reassembled tar")
    if seen != len(by_name):
        raise FormatError(f"the tar has {seen} entries, the TOC {len(by_name)}")
    return VerifyResult("sha256:" + stream.hash.hexdigest(), stream.count, nchunks, chunk_bytes, seen)
