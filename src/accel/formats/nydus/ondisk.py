"""Fixed-size RAFS v6 / blob structures: byte-exact decode and encode (the ``#[repr(C)]`` structs of nydus's
``rafs/src/metadata/layout/v6.rs``, ``storage/src/meta/mod.rs`` and ``storage/src/meta/toc.rs``).

Every ``decode`` keeps all fields, so ``encode(decode(b)) == b`` for valid input (reserved bytes are zero).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.tree import Chunk


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise FormatError(f"truncated {what}: {len(data)} < {size} bytes", entry=what)


def decode_id(raw: bytes) -> str:
    """A NUL-padded ASCII blob id."""
    text = raw.split(b"\0", 1)[0]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"blob id is not ASCII: {text!r}") from None


def encode_id(blob_id: str, size: int = 64) -> bytes:
    raw = blob_id.encode("ascii")
    if len(raw) > size:
        raise FormatError(f"blob id too long: {blob_id!r}")
    return raw.ljust(size, b"\0")


@dataclass
class SuperBlock:
    """``RafsV6SuperBlock`` at offset 1024 (128 B)."""

    FMT: ClassVar[str] = "<IIIBBHQQIIII16s16sIHHH38s"
    SIZE: ClassVar[int] = 128
    magic: int = c.EROFS_MAGIC
    checksum: int = 0
    feature_compat: int = c.EROFS_FEATURE_COMPAT_RAFS_V6
    blkszbits: int = 12
    extslots: int = 0
    root_nid: int = c.ROOT_NID
    inos: int = 0
    build_time: int = 0
    build_time_nsec: int = 0
    blocks: int = 0
    meta_blkaddr: int = 0
    xattr_blkaddr: int = 0
    uuid: bytes = bytes(16)
    volume_name: bytes = bytes(16)
    feature_incompat: int = c.INCOMPAT
    s_u: int = 0
    extra_devices: int = 0
    devt_slotoff: int = c.DEVT_SLOTOFF
    reserved: bytes = bytes(38)

    @classmethod
    def decode(cls, data: bytes) -> SuperBlock:
        _need(data, cls.SIZE, "superblock")
        return cls(*struct.unpack(cls.FMT, data[: cls.SIZE]))

    def encode(self) -> bytes:
        return struct.pack(
            self.FMT,
            self.magic,
            self.checksum,
            self.feature_compat,
            self.blkszbits,
            self.extslots,
            self.root_nid,
            self.inos,
            self.build_time,
            self.build_time_nsec,
            self.blocks,
            self.meta_blkaddr,
            self.xattr_blkaddr,
            self.uuid,
            self.volume_name,
            self.feature_incompat,
            self.s_u,
            self.extra_devices,
            self.devt_slotoff,
            self.reserved,
        )


@dataclass
class ExtSuperBlock:
    """``RafsV6SuperBlockExt`` at offset 1152 (256 B)."""

    FMT: ClassVar[str] = "<QQIIQQQII200s"
    SIZE: ClassVar[int] = 256
    flags: int = 0
    blob_table_offset: int = 0
    blob_table_size: int = 0
    chunk_size: int = c.DEFAULT_CHUNK_SIZE
    chunk_table_offset: int = 0
    chunk_table_size: int = 0
    prefetch_table_offset: int = 0
    prefetch_table_size: int = 0
    padding: int = 0
    reserved: bytes = bytes(200)

    @classmethod
    def decode(cls, data: bytes) -> ExtSuperBlock:
        _need(data, cls.SIZE, "extended superblock")
        return cls(*struct.unpack(cls.FMT, data[: cls.SIZE]))

    def encode(self) -> bytes:
        return struct.pack(
            self.FMT,
            self.flags,
            self.blob_table_offset,
            self.blob_table_size,
            self.chunk_size,
            self.chunk_table_offset,
            self.chunk_table_size,
            self.prefetch_table_offset,
            self.prefetch_table_size,
            self.padding,
            self.reserved,
        )


@dataclass
class Device:
    """``RafsV6Device`` (128 B), one per blob."""

    FMT: ClassVar[str] = "<64sII56s"
    SIZE: ClassVar[int] = 128
    blob_id: str = ""
    blocks: int = 0
    mapped_blkaddr: int = 0
    reserved: bytes = bytes(56)

    @classmethod
    def decode(cls, data: bytes) -> Device:
        _need(data, cls.SIZE, "device slot")
        raw_id, blocks, mapped, reserved = struct.unpack(cls.FMT, data[: cls.SIZE])
        return cls(decode_id(raw_id), blocks, mapped, reserved)

    def encode(self) -> bytes:
        return struct.pack(self.FMT, encode_id(self.blob_id), self.blocks, self.mapped_blkaddr, self.reserved)


@dataclass
class BlobEntry:
    """``RafsV6Blob`` (256 B), one blob-table entry."""

    FMT: ClassVar[str] = "<64sIIIIIIQQIIQQQ32s32sQQI36s"
    SIZE: ClassVar[int] = 256
    blob_id: str = ""
    blob_index: int = 0
    chunk_size: int = c.DEFAULT_CHUNK_SIZE
    chunk_count: int = 0
    compression_algo: int = 3
    digest_algo: int = 0
    features: int = 0
    compressed_size: int = 0
    uncompressed_size: int = 0
    blob_toc_size: int = 0
    ci_compressor: int = 0
    ci_offset: int = 0
    ci_compressed_size: int = 0
    ci_uncompressed_size: int = 0
    blob_toc_digest: bytes = bytes(32)
    blob_meta_digest: bytes = bytes(32)
    blob_meta_size: int = 0
    cipher_iv: bytes = bytes(8)
    cipher_algo: int = 0
    reserved: bytes = bytes(36)

    @classmethod
    def decode(cls, data: bytes) -> BlobEntry:
        _need(data, cls.SIZE, "blob table entry")
        values = list(struct.unpack(cls.FMT, data[: cls.SIZE]))
        values[0] = decode_id(values[0])
        iv = struct.pack("<Q", values[17])
        values[17] = iv
        return cls(*values)

    def encode(self) -> bytes:
        return struct.pack(
            self.FMT,
            encode_id(self.blob_id),
            self.blob_index,
            self.chunk_size,
            self.chunk_count,
            self.compression_algo,
            self.digest_algo,
            self.features,
            self.compressed_size,
            self.uncompressed_size,
            self.blob_toc_size,
            self.ci_compressor,
            self.ci_offset,
            self.ci_compressed_size,
            self.ci_uncompressed_size,
            self.blob_toc_digest,
            self.blob_meta_digest,
            self.blob_meta_size,
            struct.unpack("<Q", self.cipher_iv)[0],
            self.cipher_algo,
            self.reserved,
        )


@dataclass
class ChunkInfo:
    """``RafsV5ChunkInfo`` (80 B): an entry of the bootstrap's chunk table."""

    FMT: ClassVar[str] = "<32sIIIIQQQII"
    SIZE: ClassVar[int] = 80
    digest: bytes = bytes(32)
    blob_index: int = 0
    flags: int = 0
    compressed_size: int = 0
    uncompressed_size: int = 0
    compressed_offset: int = 0
    uncompressed_offset: int = 0
    file_offset: int = 0
    index: int = 0
    crc32: int = 0

    @classmethod
    def decode(cls, data: bytes) -> ChunkInfo:
        _need(data, cls.SIZE, "chunk info")
        return cls(*struct.unpack(cls.FMT, data[: cls.SIZE]))

    def as_chunk(self) -> Chunk:
        """The chunk this table entry describes, for the in-memory tree."""
        return Chunk(
            digest=self.digest,
            blob_index=self.blob_index,
            ci_index=self.index,
            compressed_offset=self.compressed_offset,
            compressed_size=self.compressed_size,
            uncompressed_offset=self.uncompressed_offset,
            uncompressed_size=self.uncompressed_size,
            compressed=bool(self.flags & c.CHUNK_COMPRESSED),
            crc32=self.crc32,
            has_crc32=bool(self.flags & c.CHUNK_HAS_CRC32),
        )

    def encode(self) -> bytes:
        return struct.pack(
            self.FMT,
            self.digest,
            self.blob_index,
            self.flags,
            self.compressed_size,
            self.uncompressed_size,
            self.compressed_offset,
            self.uncompressed_offset,
            self.file_offset,
            self.index,
            self.crc32,
        )


@dataclass(frozen=True)
class ChunkAddr:
    """``RafsV6InodeChunkAddr`` (8 B): one chunk index of a chunk-based inode."""

    device_id: int
    ci_index: int
    blkaddr: int

    @classmethod
    def decode(cls, data: bytes) -> ChunkAddr:
        lo, hi, blk = struct.unpack("<HHI", data[:8])
        return cls(hi & 0xFF, lo | (hi >> 8) << 16, blk)

    def encode(self) -> bytes:
        if not 0 <= self.ci_index < c.MAX_CHUNK_COUNT or not 0 <= self.device_id <= 0xFF:
            raise FormatError(f"chunk index out of range: {self}")
        hi = (self.device_id & 0xFF) | ((self.ci_index >> 16) & 0xFF) << 8
        return struct.pack("<HHI", self.ci_index & 0xFFFF, hi, self.blkaddr)

    @property
    def blob_index(self) -> int:
        return self.device_id - 1


@dataclass
class Inode:
    """An EROFS inode, compact (32 B) or extended (64 B); ``compact`` selects the encoding."""

    compact: bool = False
    format: int = 1
    xattr_icount: int = 0
    mode: int = 0
    nlink: int = 1
    size: int = 0
    i_u: int = 0
    ino: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    reserved: bytes = field(default=bytes(16))

    @property
    def datalayout(self) -> int:
        return (self.format >> 1) & 0x7

    @property
    def isize(self) -> int:
        return c.INODE_COMPACT_SIZE if self.compact else c.INODE_EXTENDED_SIZE

    @classmethod
    def decode(cls, data: bytes, what: str = "inode") -> Inode:
        _need(data, 2, what)
        fmt = struct.unpack("<H", data[:2])[0]
        if fmt & 1:
            _need(data, 64, what)
            f = struct.unpack("<HHHHQIIIIQII16s", data[:64])
            return cls(False, f[0], f[1], f[2], f[11], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[12])
        _need(data, 32, what)
        f = struct.unpack("<HHHHIIIIHH4s", data[:32])
        return cls(
            True,
            f[0],
            f[1],
            f[2],
            f[3],
            f[4],
            f[6],
            f[7],
            f[8],
            f[9],
            0,
            0,
            f[5].to_bytes(4, "little") + f[10] + bytes(8),
        )

    def encode(self) -> bytes:
        if self.compact:
            return struct.pack(
                "<HHHHIIIIHH4s",
                self.format,
                self.xattr_icount,
                self.mode,
                self.nlink,
                self.size,
                int.from_bytes(self.reserved[:4], "little"),
                self.i_u,
                self.ino,
                self.uid,
                self.gid,
                self.reserved[4:8],
            )
        return struct.pack(
            "<HHHHQIIIIQII16s",
            self.format,
            self.xattr_icount,
            self.mode,
            0,
            self.size,
            self.i_u,
            self.ino,
            self.uid,
            self.gid,
            self.mtime,
            self.mtime_nsec,
            self.nlink,
            self.reserved,
        )


@dataclass(frozen=True)
class Dirent:
    """``RafsV6Dirent`` with its name (the name lives elsewhere in the block)."""

    nid: int
    file_type: int
    name: bytes


def decode_dirent_block(block: bytes, what: str) -> list[Dirent]:
    """The dirents of one directory block (``block`` is the used part of it)."""
    if len(block) < c.DIRENT_SIZE:
        raise FormatError("directory block too small", entry=what)
    first_nameoff = struct.unpack_from("<H", block, 8)[0]
    if first_nameoff % c.DIRENT_SIZE or first_nameoff == 0 or first_nameoff > len(block):
        raise FormatError(f"bad first nameoff {first_nameoff}", entry=what)
    count = first_nameoff // c.DIRENT_SIZE
    heads = [struct.unpack_from("<QHBB", block, i * c.DIRENT_SIZE) for i in range(count)]
    out = []
    for i, (nid, nameoff, ftype, _) in enumerate(heads):
        end = heads[i + 1][1] if i + 1 < count else len(block)
        if i + 1 == count:
            # The last name of a full block runs to the first NUL (or the block end).
            nul = block.find(b"\0", nameoff)
            end = nul if nul != -1 else len(block)
        if not nameoff <= end <= len(block) or end == nameoff:
            raise FormatError(f"bad dirent name offsets {nameoff}..{end}", entry=what)
        out.append(Dirent(nid, ftype, block[nameoff:end]))
    return out


def dirent_blocks(entries: list[Dirent]) -> list[bytes]:
    """Pack sorted dirents into directory blocks (last one unpadded), as ``v6_dump_dir`` does."""
    blocks: list[bytes] = []
    group: list[Dirent] = []
    used = 0
    for ent in entries:
        need = c.DIRENT_SIZE + len(ent.name)
        if used + need > c.BLOCK_SIZE:
            blocks.append(_pack_dirents(group))
            group, used = [], 0
        group.append(ent)
        used += need
    if group:
        blocks.append(_pack_dirents(group))
    return blocks


def _pack_dirents(group: list[Dirent]) -> bytes:
    heads = bytearray()
    names = bytearray()
    nameoff = c.DIRENT_SIZE * len(group)
    for ent in group:
        heads += struct.pack("<QHBB", ent.nid, nameoff + len(names), ent.file_type, 0)
        names += ent.name
    return bytes(heads + names)


def dirent_size(names: list[bytes]) -> int:
    """``v6_dirent_size``: bytes used by the dirents of ``names``, jumping to a new block when full."""
    total = 0
    used = 0
    for name in names:
        need = c.DIRENT_SIZE + len(name)
        if used + need > c.BLOCK_SIZE:
            total += c.BLOCK_SIZE - used
            used = 0
        used += need
        total += need
    return total


def xattr_name_split(name: bytes) -> tuple[int, bytes]:
    for prefix, index in c.XATTR_PREFIXES:
        if name.startswith(prefix):
            return index, name[len(prefix) :]
    raise FormatError(f"unsupported xattr name prefix: {name!r}")


def encode_xattrs(xattrs: list[tuple[bytes, bytes]]) -> bytes:
    """The inline xattr area (ibody header + entries), or b"" if there are none."""
    if not xattrs:
        return b""
    out = bytearray(c.XATTR_IBODY_HEADER_SIZE)
    for name, value in xattrs:
        index, suffix = xattr_name_split(name)
        if len(suffix) > 255 or len(value) > 0xFFFF:
            raise FormatError(f"xattr too large: {name!r}")
        entry = struct.pack("<BBH", len(suffix), index, len(value)) + suffix + value
        out += entry + bytes(-len(entry) % 4)
    return bytes(out)


def xattr_icount(area_len: int) -> int:
    return 0 if area_len == 0 else (area_len - c.XATTR_IBODY_HEADER_SIZE) // 4 + 1


def xattr_area_size(icount: int) -> int:
    return 0 if icount == 0 else c.XATTR_IBODY_HEADER_SIZE + (icount - 1) * 4


def decode_xattrs(area: bytes, what: str) -> list[tuple[bytes, bytes]]:
    out = []
    if len(area) < c.XATTR_IBODY_HEADER_SIZE:
        raise FormatError("xattr area too small", entry=what)
    if area[4] != 0:
        raise FormatError("shared xattrs are unsupported", entry=what)
    pos = c.XATTR_IBODY_HEADER_SIZE
    while pos + 4 <= len(area):
        name_len, index, value_size = struct.unpack_from("<BBH", area, pos)
        end = pos + 4 + name_len + value_size
        if end > len(area):
            raise FormatError("xattr entry overruns the inode", entry=what)
        prefix = c.XATTR_INDEX_PREFIX.get(index)
        if prefix is None:
            raise FormatError(f"unknown xattr name index {index}", entry=what)
        name = prefix + area[pos + 4 : pos + 4 + name_len]
        out.append((name, area[pos + 4 + name_len : end]))
        pos = end + (-end % 4)
    return out


@dataclass
class CiV1:
    """``BlobChunkInfoV1Ondisk`` (16 B)."""

    uncompressed_offset: int
    uncompressed_size: int
    compressed_offset: int
    compressed_size: int

    @property
    def compressed(self) -> bool:
        return self.compressed_size != self.uncompressed_size

    @classmethod
    def decode(cls, data: bytes) -> CiV1:
        uncomp, comp = struct.unpack("<QQ", data[:16])
        u_off = uncomp & 0xFFF_FFFF_F000
        u_size = ((uncomp >> 44) | ((uncomp >> 8) & 0xF) << 20) + 1
        c_off = comp & 0xFF_FFFF_FFFF
        c_size = ((comp >> 44) | ((comp >> 40) & 0xF) << 20) + 1
        return cls(u_off, u_size, c_off, c_size)

    def encode(self) -> bytes:
        if self.uncompressed_offset & 0xFFF or not 0 < self.uncompressed_size <= 1 << 24:
            raise FormatError(f"chunk not encodable in ci v1: {self}")
        if not 0 < self.compressed_size <= 1 << 24 or self.compressed_offset >= 1 << 40:
            raise FormatError(f"chunk not encodable in ci v1: {self}")
        us = self.uncompressed_size - 1
        cs = self.compressed_size - 1
        uncomp = self.uncompressed_offset | (us & 0xFFFFF) << 44 | ((us >> 20) & 0xF) << 8
        comp = self.compressed_offset | (cs & 0xFFFFF) << 44 | ((cs >> 20) & 0xF) << 40
        return struct.pack("<QQ", uncomp, comp)


@dataclass
class CiV2:
    """``BlobChunkInfoV2Ondisk`` (24 B)."""

    uncompressed_offset: int
    uncompressed_size: int
    compressed_offset: int
    compressed_size: int
    flags: int
    data: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & 0x1)

    @classmethod
    def decode(cls, data: bytes) -> CiV2:
        uncomp, comp, extra = struct.unpack("<QQQ", data[:24])
        return cls(
            (uncomp & 0xFFFFFFFF) << 12,
            ((uncomp >> 32) & 0xFFFFFF) + 1,
            comp & 0xFF_FFFF_FFFF,
            comp >> 40,
            uncomp >> 56,
            extra,
        )

    def encode(self) -> bytes:
        uncomp = (self.uncompressed_offset >> 12) | (self.uncompressed_size - 1) << 32 | self.flags << 56
        comp = self.compressed_offset | self.compressed_size << 40
        return struct.pack("<QQQ", uncomp, comp, self.data)


@dataclass
class ZranContext:
    """``ZranInflateContext`` (40 B, ``storage/src/meta/zran.rs``): where inflating can restart in the
    original gzip layer, and the span it covers. ``dict_offset`` counts from the start of the dictionaries,
    which follow the whole context array."""

    FMT: ClassVar[str] = "<QQQIIIBBBB"
    SIZE: ClassVar[int] = 40
    in_offset: int
    out_offset: int
    dict_offset: int
    in_len: int
    out_len: int
    dict_size: int
    ctx_byte: int
    ctx_bits: int

    @classmethod
    def decode(cls, data: bytes) -> ZranContext:
        _need(data, cls.SIZE, "zran context")
        values = struct.unpack(cls.FMT, data[: cls.SIZE])
        return cls(*values[:8])

    def encode(self) -> bytes:
        return struct.pack(
            self.FMT,
            self.in_offset,
            self.out_offset,
            self.dict_offset,
            self.in_len,
            self.out_len,
            self.dict_size,
            self.ctx_byte,
            self.ctx_bits,
            0,
            0,
        )


@dataclass
class BlobMetaHeader:
    """``BlobCompressionContextHeader`` (4096 B) that follows the ci array."""

    FMT: ClassVar[str] = "<IIIIQQQQQI4032sI"
    SIZE: ClassVar[int] = 4096
    magic: int = c.BLOB_META_MAGIC
    features: int = 0
    ci_compressor: int = 0
    ci_entries: int = 0
    ci_offset: int = 0
    ci_compressed_size: int = 0
    ci_uncompressed_size: int = 0
    zran_offset: int = 0
    zran_size: int = 0
    zran_count: int = 0
    reserved: bytes = bytes(4032)
    magic2: int = c.BLOB_META_MAGIC

    @classmethod
    def decode(cls, data: bytes) -> BlobMetaHeader:
        _need(data, cls.SIZE, "blob.meta header")
        return cls(*struct.unpack(cls.FMT, data[: cls.SIZE]))

    def encode(self) -> bytes:
        return struct.pack(
            self.FMT,
            self.magic,
            self.features,
            self.ci_compressor,
            self.ci_entries,
            self.ci_offset,
            self.ci_compressed_size,
            self.ci_uncompressed_size,
            self.zran_offset,
            self.zran_size,
            self.zran_count,
            self.reserved,
            self.magic2,
        )


@dataclass
class TocEntry:
    """A ``TocEntry`` (128 B) of ``rafs.blob.toc``."""

    FMT: ClassVar[str] = "<II16s32sQQQ48s"
    SIZE: ClassVar[int] = 128
    flags: int = c.TOC_NONE
    reserved1: int = 0
    name: str = ""
    uncompressed_digest: bytes = bytes(32)
    compressed_offset: int = 0
    compressed_size: int = 0
    uncompressed_size: int = 0
    reserved2: bytes = bytes(48)

    @property
    def compressor(self) -> str:
        return c.TOC_COMPRESSORS.get(self.flags, "unknown")

    @classmethod
    def decode(cls, data: bytes) -> TocEntry:
        _need(data, cls.SIZE, "ToC entry")
        f = list(struct.unpack(cls.FMT, data[: cls.SIZE]))
        f[2] = decode_id(f[2])
        return cls(*f)

    def encode(self) -> bytes:
        return struct.pack(
            self.FMT,
            self.flags,
            self.reserved1,
            encode_id(self.name, 16),
            self.uncompressed_digest,
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_size,
            self.reserved2,
        )


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte GNU header nydus writes after each blob section (``ArtifactWriter::write_tar_header`` in
    ``builder/src/core/context.rs``)."""
    raw_name = name.encode("utf-8")
    if len(raw_name) > 100 or not 0 <= size < 8**11:
        raise FormatError(f"blob section header not encodable: {name!r} size {size}")
    hdr = bytearray(512)
    hdr[0 : len(raw_name)] = raw_name
    hdr[124:136] = b"%011o\0" % size
    hdr[136:148] = b"00000000000\0"
    hdr[156] = ord("0")
    hdr[257:265] = b"ustar  \0"
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%07o\0" % sum(hdr)
    return bytes(hdr)


@dataclass(frozen=True)
class TarTrailerHeader:
    """A decoded trailing tar header of a blob section."""

    name: str
    size: int


def decode_tar_header(hdr: bytes) -> TarTrailerHeader:
    if len(hdr) != 512:
        raise FormatError("truncated blob tar header")
    stored = hdr[148:156]
    try:
        want = int(stored.replace(b"\0", b" ").strip() or b"0", 8)
        size_field = hdr[124:136].replace(b"\0", b" ").strip()
        size = int(size_field or b"0", 8)
    except ValueError:
        raise FormatError("malformed blob tar header") from None
    got = sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
    if got != want:
        raise FormatError(f"blob tar header checksum mismatch ({want:o} != {got:o})")
    name = hdr[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    return TarTrailerHeader(name, size)
