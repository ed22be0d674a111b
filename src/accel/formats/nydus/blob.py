"""Reading a Nydus data blob: tar trailer, ToC, blob meta, chunk data, device image (as nydus writes them in
``builder/src/core/blob.rs``, with the ToC of ``storage/src/meta/toc.rs`` and the blob meta of
``storage/src/meta/mod.rs``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeGuard

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.batch import (
    BatchContext,
    batch_ref,
    decode_batch_table,
    is_batched,
    slice_chunk,
    unit_bytes,
)
from accel.formats.nydus.chunkcodec import decompress, digest_of
from accel.formats.nydus.ondisk import (
    BlobMetaHeader,
    CiV1,
    CiV2,
    TocEntry,
    ZranContext,
    decode_tar_header,
)
from accel.formats.zran import inflate_from

_MAX_TOC = 1 << 20
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Section:
    """One "data, then its 512-byte tar header" section of the blob trailer."""

    name: str
    data_offset: int
    size: int
    header_offset: int


@dataclass
class BlobFile:
    """A decoded nydus blob."""

    data: bytes
    sections: list[Section]
    toc: list[TocEntry]
    toc_digest: bytes
    meta_header: BlobMetaHeader | None
    chunks: list[CiV1 | CiV2] = field(default_factory=list)
    digests: list[bytes] | None = None
    zran: ZranTable = field(default_factory=lambda: ZranTable())
    # An OCI-ref blob's chunks live in the original gzip layer: ranged reads of it, when set.
    original: ReadAt | None = None

    @property
    def is_zran(self) -> bool:
        return bool(self.meta_header is not None and self.meta_header.features & c.BF_ZRAN)

    batches: list[BatchContext] = field(default_factory=list)
    _units: dict[int, bytes] = field(default_factory=dict, repr=False)

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def toc_entry(self, name: str) -> TocEntry | None:
        return next((e for e in self.toc if e.name == name), None)

    def section_bytes(self, name: str) -> bytes:
        sec = self.section(name)
        if sec is None:
            raise FormatError(f"blob has no {name} section", entry=name)
        return self.data[sec.data_offset : sec.data_offset + sec.size]

    @property
    def uncompressed_size(self) -> int:
        end = max((ci.uncompressed_offset + ci.uncompressed_size for ci in self.chunks), default=0)
        return -(-end // c.BLOCK_SIZE) * c.BLOCK_SIZE

    def bootstrap(self) -> bytes | None:
        """The inlined ``image.boot``, decompressed, or None."""
        entry = self.toc_entry(c.ENTRY_BOOTSTRAP)
        sec = self.section(c.ENTRY_BOOTSTRAP)
        if sec is None:
            return None
        raw = self.data[sec.data_offset : sec.data_offset + sec.size]
        if entry is not None:
            out = (
                decompress(entry.compressor, raw, entry.uncompressed_size)
                if entry.compressor != "none"
                else raw
            )
        else:
            out = raw
        if entry is not None and hashlib.sha256(out).digest() != entry.uncompressed_digest:
            raise FormatError("image.boot digest mismatch", entry=c.ENTRY_BOOTSTRAP)
        return out

    def chunk_data(self, index: int, compressor: str) -> bytes:
        ci = self.chunks[index]
        if is_zran_chunk(ci):
            if self.original is None:
                raise FormatError("an OCI-ref blob's chunks need the original layer", entry=c.ENTRY_BLOB)
            return self.zran.chunk(index, ci, self.original)
        if is_batched(ci):
            # One unit serves many chunks: keep the last few decompressed.
            key = batch_ref(ci)[0]
            unit = self._units.get(key)
            if unit is None:
                unit = unit_bytes(ci, self.batches, compressor, self._read)
                if len(self._units) >= 4:
                    self._units.pop(next(iter(self._units)))
                self._units[key] = unit
            return slice_chunk(ci, unit)
        raw = self.data[ci.compressed_offset : ci.compressed_offset + ci.compressed_size]
        if len(raw) != ci.compressed_size:
            raise FormatError(f"chunk {index} beyond end of blob", entry=c.ENTRY_BLOB)
        if not ci.compressed:
            return raw
        return decompress(compressor, raw, ci.uncompressed_size)

    def _read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def device_image(self, compressor: str, size: int | None = None) -> bytes:
        """The uncompressed view of the blob: chunk i at its uncompressed offset (EROFS device)."""
        total = self.uncompressed_size if size is None else size
        out = bytearray(total)
        for i, ci in enumerate(self.chunks):
            piece = self.chunk_data(i, compressor)
            if len(piece) != ci.uncompressed_size or ci.uncompressed_offset + len(piece) > total:
                raise FormatError(f"chunk {i} has a bad size", entry=c.ENTRY_BLOB)
            out[ci.uncompressed_offset : ci.uncompressed_offset + len(piece)] = piece
        return bytes(out)


def read_sections(data: bytes) -> list[Section]:
    """Walk the tar headers from the end of the blob (``seekFileByTarHeader``), returned in file order."""
    out: list[Section] = []
    end = len(data)
    while end > 0:
        if end < c.TAR_BLOCK:
            raise FormatError(f"truncated blob trailer at offset {end}")
        hdr = decode_tar_header(data[end - c.TAR_BLOCK : end])
        start = end - c.TAR_BLOCK - hdr.size
        if start < 0:
            raise FormatError(f"section size {hdr.size} exceeds the blob", entry=hdr.name)
        out.append(Section(hdr.name, start, hdr.size, end - c.TAR_BLOCK))
        end = start
    out.reverse()
    return out


def read_blob(data: bytes, *, check: bool = True) -> BlobFile:
    """Decode a blob written with tar headers and a ToC; with ``check`` verify every digest."""
    data = bytes(data)
    sections = read_sections(data)
    toc_sec = next((s for s in sections if s.name == c.TOC_NAME), None)
    toc: list[TocEntry] = []
    toc_digest = bytes(32)
    if toc_sec is not None:
        if toc_sec.size % c.TOC_ENTRY_SIZE or toc_sec.size > _MAX_TOC:
            raise FormatError(f"bad ToC size {toc_sec.size}", entry=c.TOC_NAME)
        raw = data[toc_sec.data_offset : toc_sec.data_offset + toc_sec.size]
        toc = [TocEntry.decode(raw[i : i + 128]) for i in range(0, len(raw), 128)]
        toc_digest = hashlib.sha256(data[toc_sec.data_offset : toc_sec.header_offset + c.TAR_BLOCK]).digest()
    blob = BlobFile(data, sections, toc, toc_digest, None)
    meta = blob.section(c.ENTRY_META)
    if meta is not None:
        if meta.size < BlobMetaHeader.SIZE:
            raise FormatError("blob.meta too small", entry=c.ENTRY_META)
        hstart = meta.data_offset + meta.size - BlobMetaHeader.SIZE
        header = BlobMetaHeader.decode(data[hstart : hstart + BlobMetaHeader.SIZE])
        blob.meta_header = header
        if header.magic != c.BLOB_META_MAGIC or header.magic2 != c.BLOB_META_MAGIC:
            raise FormatError("bad blob.meta magic", entry=c.ENTRY_META)
        if (
            header.ci_offset != meta.data_offset
            or header.ci_compressed_size != meta.size - BlobMetaHeader.SIZE
        ):
            raise FormatError("blob.meta header does not match its section", entry=c.ENTRY_META)
        stored = data[header.ci_offset : header.ci_offset + header.ci_compressed_size]
        decoded = _decode_meta(stored, header)
        blob.chunks, blob.batches = decoded.chunks, decoded.batches
        blob.zran = decoded.zran
    dig = blob.section(c.ENTRY_DIGEST)
    if dig is not None:
        raw = data[dig.data_offset : dig.data_offset + dig.size]
        if len(raw) % 32:
            raise FormatError("blob.digest size is not a multiple of 32", entry=c.ENTRY_DIGEST)
        blob.digests = [raw[i : i + 32] for i in range(0, len(raw), 32)]
    if check:
        _check_blob(blob)
    return blob


@dataclass
class BlobMeta:
    """A blob's chunk infos and batch or zran contexts, decoded from its blob meta."""

    header: BlobMetaHeader
    chunks: list[CiV1 | CiV2]
    batches: list[BatchContext]
    zran: ZranTable = field(default_factory=lambda: ZranTable())


def read_blob_meta(raw: bytes) -> BlobMeta:
    """Decode what nydusd fetches from a blob: ``[ci_offset, ci_offset + ci_compressed_size + 4096)``, the
    stored ci data and the header after it."""
    if len(raw) < BlobMetaHeader.SIZE:
        raise FormatError("blob meta too small", entry=c.ENTRY_META)
    header = BlobMetaHeader.decode(raw[-BlobMetaHeader.SIZE :])
    if header.magic != c.BLOB_META_MAGIC or header.magic2 != c.BLOB_META_MAGIC:
        raise FormatError("bad blob.meta magic", entry=c.ENTRY_META)
    if header.ci_compressed_size != len(raw) - BlobMetaHeader.SIZE:
        raise FormatError("blob meta header does not match its size", entry=c.ENTRY_META)
    return _decode_meta(raw[: -BlobMetaHeader.SIZE], header)


def _decode_meta(stored: bytes, header: BlobMetaHeader) -> BlobMeta:
    compressor = c.COMPRESSORS.get(header.ci_compressor)
    if compressor is None:
        raise FormatError(f"unknown ci compressor {header.ci_compressor}", entry=c.ENTRY_META)
    ci = stored if compressor == "none" else decompress(compressor, stored, header.ci_uncompressed_size)
    zran = ZranTable(*decode_zran_table(ci, header))
    return BlobMeta(header, decode_ci_array(ci, header), decode_batch_table(ci, header), zran)


def decode_ci_array(ci: bytes, header: BlobMetaHeader) -> list[CiV1 | CiV2]:
    v2 = bool(header.features & c.BF_CHUNK_INFO_V2)
    per = c.CI_V2_SIZE if v2 else c.CI_V1_SIZE
    end = header.ci_entries * per
    if v2 and header.features & (c.BF_ZRAN | c.BF_BATCH):
        # The context table follows the entries directly and ends the ci data.
        ok = header.zran_offset == end and end + header.zran_size == len(ci)
    else:
        ok = len(ci) == end
    if len(ci) != header.ci_uncompressed_size or not ok:
        raise FormatError(f"ci array is {len(ci)} bytes for {header.ci_entries} entries", entry=c.ENTRY_META)
    out: list[CiV1 | CiV2] = []
    for i in range(header.ci_entries):
        raw = ci[i * per : (i + 1) * per]
        out.append(CiV2.decode(raw) if v2 else CiV1.decode(raw))
    return out


@dataclass
class ZranTable:
    """A zran blob's inflate contexts and their windows (empty for other blobs). It keeps the output of
    the last context it inflated: a file's chunks follow one another, most often in the same context."""

    contexts: list[ZranContext] = field(default_factory=list)
    dicts: bytes = b""
    _last: tuple[int, bytes] | None = field(default=None, repr=False)

    def chunk(self, index: int, ci: CiV2, read_at: ReadAt) -> bytes:
        """Chunk ``index``, inflated from its context's range of the original layer (``read_at``)."""
        which = ci.data >> 32
        if self._last is None or self._last[0] != which:
            self._last = (which, self._inflate(which, read_at))
        offset = ci.data & 0xFFFFFFFF
        data = self._last[1][offset : offset + ci.uncompressed_size]
        if len(data) != ci.uncompressed_size:
            raise FormatError(f"chunk {index} lies beyond its zran context", entry=c.ENTRY_BLOB)
        return data

    def _inflate(self, which: int, read_at: ReadAt) -> bytes:
        """Context ``which``'s output: its compressed range inflated from its window, as nydusd does."""
        if which >= len(self.contexts):
            raise FormatError(f"zran context {which} of {len(self.contexts)}", entry=c.ENTRY_META)
        ctx = self.contexts[which]
        window = self.dicts[ctx.dict_offset : ctx.dict_offset + ctx.dict_size]
        compressed = read_at(ctx.in_offset, ctx.in_len)
        out = b"".join(
            inflate_from([compressed], window=window, bits=ctx.ctx_bits, partial_byte=ctx.ctx_byte)
        )
        if len(out) < ctx.out_len:
            raise FormatError(f"zran context {which} inflates to {len(out)} bytes, not {ctx.out_len}")
        return out[: ctx.out_len]


def is_zran_chunk(ci: CiV1 | CiV2) -> TypeGuard[CiV2]:
    return isinstance(ci, CiV2) and bool(ci.flags & c.CI2_ZRAN)


def decode_zran_table(ci: bytes, header: BlobMetaHeader) -> tuple[list[ZranContext], bytes]:
    """The inflate contexts and the dictionary area of a zran blob's ci data (empty for other blobs)."""
    if not header.features & c.BF_ZRAN:
        return [], b""
    table = ci[header.zran_offset : header.zran_offset + header.zran_size]
    count = header.zran_count
    if len(table) != header.zran_size or count * ZranContext.SIZE > len(table):
        raise FormatError(f"zran table of {len(table)} bytes for {count} contexts", entry=c.ENTRY_META)
    contexts = [ZranContext.decode(table[i * ZranContext.SIZE :]) for i in range(count)]
    dicts = table[count * ZranContext.SIZE :]
    for i, ctx in enumerate(contexts):
        if ctx.dict_offset + ctx.dict_size > len(dicts) or ctx.dict_size > 1 << 15:
            raise FormatError(f"zran context {i}: dictionary beyond the table", entry=c.ENTRY_META)
    return contexts, dicts


def _check_blob(blob: BlobFile) -> None:
    data = blob.data
    for entry in blob.toc:
        if entry.name == c.ENTRY_BLOB:
            sec = blob.section(c.ENTRY_BLOB)
            if sec is None:
                raise FormatError("ToC names image.blob but the blob has no such section", entry=entry.name)
            got = hashlib.sha256(data[sec.data_offset : sec.header_offset + c.TAR_BLOCK]).digest()
        elif entry.name == c.ENTRY_BOOTSTRAP:
            blob.bootstrap()
            continue
        else:
            start, size = entry.compressed_offset, entry.compressed_size
            if start + size > len(data):
                raise FormatError("ToC entry beyond end of blob", entry=entry.name)
            raw = data[start : start + size]
            if entry.compressor != "none":
                raw = decompress(entry.compressor, raw, entry.uncompressed_size)
            got = hashlib.sha256(raw).digest()
        if got != entry.uncompressed_digest:
            raise FormatError("ToC digest mismatch", entry=entry.name)
    blob_sec = blob.section(c.ENTRY_BLOB)
    limit = blob_sec.size if blob_sec is not None else len(data)
    # An OCI-ref blob's chunks point into the original gzip layer, not into this blob.
    separate = blob.meta_header is not None and blob.meta_header.features & c.BF_SEPARATE
    for i, ci in enumerate(blob.chunks):
        end = ci.compressed_offset + ci.compressed_size
        if is_batched(ci):
            index = batch_ref(ci)[0]
            if index >= len(blob.batches):
                raise FormatError(f"chunk {i} names batch {index} of {len(blob.batches)}", entry=c.ENTRY_META)
            end = ci.compressed_offset + blob.batches[index].compressed_size
        if not separate and end > limit:
            raise FormatError(f"chunk {i} beyond the chunk data", entry=c.ENTRY_BLOB)
        if ci.uncompressed_offset % c.BLOCK_SIZE:
            raise FormatError(f"chunk {i} uncompressed offset not 4K-aligned", entry=c.ENTRY_BLOB)
    if blob.digests is not None and len(blob.digests) != len(blob.chunks):
        raise FormatError(f"{len(blob.digests)} digests for {len(blob.chunks)} chunks", entry=c.ENTRY_DIGEST)


def verify_chunk_digests(blob: BlobFile, compressor: str, digester: str) -> list[bytes]:
    """Digest every decompressed chunk; check them against ``blob.digest`` when present."""
    out = []
    for i in range(len(blob.chunks)):
        d = digest_of(digester, blob.chunk_data(i, compressor))
        if blob.digests is not None and blob.digests[i] != d:
            raise FormatError(f"chunk {i} digest mismatch", entry=c.ENTRY_DIGEST)
        out.append(d)
    return out


def stripped_blob_id(blob: BlobFile) -> str:
    """sha256 of the blob without the ``blob.digest`` payload: the id nydus-image gives a blob it builds on
    its own (``BlobContext.blob_id``, "sha256(blob)", in nydus's ``builder/src/core/context.rs``), computed
    before the digest section it then appends."""
    h = hashlib.sha256()
    dig = blob.section(c.ENTRY_DIGEST)
    if dig is None:
        h.update(blob.data)
    else:
        h.update(blob.data[: dig.data_offset])
        h.update(blob.data[dig.data_offset + dig.size :])
    return h.hexdigest()


def extract_via_toc(data: bytes, name: str) -> bytes:
    """One ToC entry's uncompressed bytes, found the way consumers do (``seekFileByTOC`` in
    nydus-snapshotter's ``pkg/converter/convert_unix.go``).

    The last 512 bytes must be the ``rafs.blob.toc`` tar header; ``image.blob`` is located at offset 0
    whatever its ToC offset says (older builders wrote its size there).
    """
    if len(data) < c.TAR_BLOCK:
        raise FormatError("blob too small for a ToC", entry=c.TOC_NAME)
    hdr = decode_tar_header(data[-c.TAR_BLOCK :])
    if hdr.name != c.TOC_NAME or hdr.size % c.TOC_ENTRY_SIZE or hdr.size > _MAX_TOC:
        raise FormatError(f"last tar header is {hdr.name!r} of {hdr.size} bytes, not a ToC", entry=c.TOC_NAME)
    start = len(data) - c.TAR_BLOCK - hdr.size
    if start < 0:
        raise FormatError("ToC larger than the blob", entry=c.TOC_NAME)
    for i in range(start, start + hdr.size, c.TOC_ENTRY_SIZE):
        entry = TocEntry.decode(data[i : i + c.TOC_ENTRY_SIZE])
        if entry.name != name:
            continue
        offset = 0 if name == c.ENTRY_BLOB else entry.compressed_offset
        raw = data[offset : offset + entry.compressed_size]
        if len(raw) != entry.compressed_size:
            raise FormatError("ToC entry beyond end of blob", entry=name)
        if name == c.ENTRY_BLOB:
            return raw
        out = (
            raw if entry.compressor == "none" else decompress(entry.compressor, raw, entry.uncompressed_size)
        )
        if hashlib.sha256(out).digest() != entry.uncompressed_digest:
            raise FormatError("ToC digest mismatch", entry=name)
        return out
    raise FormatError("not in the ToC", entry=name)


def blob_meta_file(data: bytes) -> bytes:
    """``image/<hex>.blob.meta`` for a blob: uncompressed ci array, zero-padded to 4 KiB, then the header."""
    ci = extract_via_toc(data, c.ENTRY_META)
    header = extract_via_toc(data, c.ENTRY_META_HEADER)
    return ci + bytes(-len(ci) % c.BLOCK_SIZE) + header
