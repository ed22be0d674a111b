"""Decoding of RAFS v6 bootstraps (nydus's ``rafs/src/metadata/layout/v6.rs``) into plain records, checking on
the way what a reader must refuse (see :func:`read_bootstrap`)."""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.batch import is_batched, slice_chunk, unit_bytes
from accel.formats.nydus.blob import BlobMeta, is_zran_chunk, read_blob_meta
from accel.formats.nydus.chunkcodec import decompress, digest_of
from accel.formats.nydus.ondisk import (
    BlobEntry,
    ChunkAddr,
    ChunkInfo,
    Device,
    Dirent,
    ExtSuperBlock,
    Inode,
    SuperBlock,
    decode_dirent_block,
    decode_xattrs,
    xattr_area_size,
)
from accel.formats.nydus.tree import Node

_MAX_DEPTH = 4096


@dataclass
class InodeRecord:
    """One decoded inode with everything hanging off it."""

    nid: int
    offset: int
    inode: Inode
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[ChunkAddr] = field(default_factory=list)
    symlink: bytes | None = None
    dirents: list[Dirent] = field(default_factory=list)

    @property
    def mode(self) -> int:
        return self.inode.mode

    @property
    def chunk_bits(self) -> int:
        return (self.inode.i_u & 0x1F) + 12


@dataclass
class Bootstrap:
    """A decoded RAFS v6 bootstrap. ``entries`` lists (path, nid) sorted by path bytes, root first."""

    data: bytes
    superblock: SuperBlock
    ext: ExtSuperBlock
    devices: list[Device]
    blobs: list[BlobEntry]
    prefetch: list[int]
    chunk_table: list[ChunkInfo]
    inodes: dict[int, InodeRecord]
    entries: list[tuple[bytes, int]]

    @property
    def chunk_size(self) -> int:
        return self.ext.chunk_size

    @property
    def meta_addr(self) -> int:
        return self.superblock.meta_blkaddr * c.BLOCK_SIZE

    @property
    def compressor(self) -> str:
        for name, bit in c.SUPER_COMPRESSION_FLAG.items():
            if self.ext.flags & bit:
                return name
        return "none"

    @property
    def digester(self) -> str:
        return "sha256" if self.ext.flags & c.SF_HASH_SHA256 else "blake3"

    def inode_at(self, path: bytes) -> InodeRecord:
        for p, nid in self.entries:
            if p == path:
                return self.inodes[nid]
        raise KeyError(path)


def read_bootstrap(data: bytes, *, check: bool = True) -> Bootstrap:
    """Decode a RAFS v6 bootstrap; with ``check`` refuse what a reader must not mount: a size that is not
    whole 4 KiB blocks; a superblock other than nydus writes (magic, zero checksum, block size, features,
    exactly one compression and one hash flag, a power-of-two chunk size); tables outside the file; blob
    and device entries with bad ids, indexes or algorithms; directories without a proper ``.`` and ``..``;
    chunks on a device or block that does not exist."""
    data = bytes(data)
    if len(data) < c.BLOCK_SIZE:
        raise FormatError(f"bootstrap too small ({len(data)} bytes)", entry="superblock")
    sb = SuperBlock.decode(data[c.SB_OFFSET : c.SB_OFFSET + SuperBlock.SIZE])
    ext = ExtSuperBlock.decode(data[c.EXT_SB_OFFSET : c.EXT_SB_OFFSET + ExtSuperBlock.SIZE])
    if check:
        _check_superblocks(data, sb, ext)
    ndev = sb.extra_devices
    devices = [
        Device.decode(data[c.DEVT_OFFSET + i * 128 : c.DEVT_OFFSET + (i + 1) * 128]) for i in range(ndev)
    ]
    if c.DEVT_OFFSET + ndev * 128 > len(data):
        raise FormatError("device table beyond end of file", entry="device table")
    blobs = [
        BlobEntry.decode(data[ext.blob_table_offset + i * 256 : ext.blob_table_offset + (i + 1) * 256])
        for i in range(ext.blob_table_size // 256)
    ]
    prefetch = list(
        struct.unpack_from(f"<{ext.prefetch_table_size // 4}I", data, ext.prefetch_table_offset)
        if ext.prefetch_table_size
        else ()
    )
    chunk_table = [
        ChunkInfo.decode(data[ext.chunk_table_offset + i * 80 : ext.chunk_table_offset + (i + 1) * 80])
        for i in range(ext.chunk_table_size // 80)
    ]
    if check:
        _check_tables(sb, ext, devices, blobs)
    inodes: dict[int, InodeRecord] = {}
    entries: list[tuple[bytes, int]] = []
    _walk(data, sb, ext, sb.root_nid, b"/", inodes, entries, 0, set())
    entries.sort(key=lambda e: e[0])
    bs = Bootstrap(data, sb, ext, devices, blobs, prefetch, chunk_table, inodes, entries)
    if check:
        _check_inodes(bs)
    return bs


def _check_superblocks(data: bytes, sb: SuperBlock, ext: ExtSuperBlock) -> None:
    def bad(msg: str) -> FormatError:
        return FormatError(msg, entry="superblock")

    if len(data) % c.BLOCK_SIZE:
        raise bad(f"bootstrap size {len(data)} is not a multiple of 4096")
    if sb.magic != c.EROFS_MAGIC:
        raise bad(f"bad magic {sb.magic:#x}")
    if sb.checksum != 0:
        raise bad("checksum must be 0")
    if sb.blkszbits not in (12, 9):
        raise bad(f"unsupported blkszbits {sb.blkszbits}")
    if sb.extslots != 0 or sb.s_u != 0 or sb.xattr_blkaddr != 0:
        raise bad("extslots, s_u and xattr_blkaddr must be 0")
    if sb.inos == 0:
        raise bad("inos is 0")
    if sb.devt_slotoff * 128 != c.DEVT_OFFSET:
        raise bad(f"devt_slotoff {sb.devt_slotoff} != 11")
    if sb.feature_incompat != c.INCOMPAT:
        raise bad(f"feature_incompat {sb.feature_incompat:#x} != 0xc")
    if not sb.feature_compat & c.EROFS_FEATURE_COMPAT_RAFS_V6:
        raise bad("feature_compat lacks RAFS_V6")
    flags = ext.flags
    if bin(flags & c.SF_COMPRESSION_MASK).count("1") != 1:
        raise bad(f"flags {flags:#x}: need exactly one compression flag")
    if bin(flags & c.SF_HASH_MASK).count("1") != 1:
        raise bad(f"flags {flags:#x}: need exactly one hash flag")
    cs = ext.chunk_size
    if cs & (cs - 1) or not c.MIN_CHUNK_SIZE <= cs <= c.MAX_CHUNK_SIZE:
        raise bad(f"chunk size {cs:#x} is not a power of two in [4K, 16M]")
    devt_end = c.DEVT_OFFSET + sb.extra_devices * 128
    size = len(data)
    if ext.blob_table_size:
        off, n = ext.blob_table_offset, ext.blob_table_size
        if off % c.BLOCK_SIZE or off < c.BLOCK_SIZE or off < devt_end or n % 256 or off + n > size:
            raise bad(f"bad blob table {off}+{n}")
    blob_range = (ext.blob_table_offset, ext.blob_table_offset + ext.blob_table_size)
    if ext.chunk_table_size:
        off, n = ext.chunk_table_offset, ext.chunk_table_size
        if off % c.BLOCK_SIZE or n % 80 or off + n > size or _overlap((off, off + n), blob_range):
            raise bad(f"bad chunk table {off}+{n}")
    if ext.prefetch_table_size:
        off, n = ext.prefetch_table_offset, ext.prefetch_table_size
        chunk_range = (ext.chunk_table_offset, ext.chunk_table_offset + ext.chunk_table_size)
        if (
            n % 4
            or off + n > size
            or _overlap((off, off + n), blob_range)
            or _overlap((off, off + n), chunk_range)
        ):
            raise bad(f"bad prefetch table {off}+{n}")
    if sb.meta_blkaddr * c.BLOCK_SIZE + sb.root_nid * 32 + 32 > size:
        raise bad("root inode beyond end of file")


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _check_tables(sb: SuperBlock, ext: ExtSuperBlock, devices: list[Device], blobs: list[BlobEntry]) -> None:
    for i, blob in enumerate(blobs):
        what = f"blob table entry {i}"
        if len(blob.blob_id) != 64:
            raise FormatError(f"blob id {blob.blob_id!r} is not 64 characters", entry=what)
        if blob.blob_index != i:
            raise FormatError(f"blob_index {blob.blob_index} != position {i}", entry=what)
        if blob.chunk_size != ext.chunk_size:
            raise FormatError(
                f"chunk size {blob.chunk_size:#x} != superblock {ext.chunk_size:#x}", entry=what
            )
        if not blob.features & c.BF_ALIGNED and not blob.features & c.BF_TARFS:
            raise FormatError("ALIGNED feature missing", entry=what)
        if blob.chunk_count > c.MAX_CHUNK_COUNT:
            raise FormatError(f"chunk_count {blob.chunk_count} too large", entry=what)
        if blob.compression_algo not in c.COMPRESSORS or blob.ci_compressor not in c.COMPRESSORS:
            raise FormatError("unknown compression algorithm", entry=what)
        if blob.digest_algo not in c.DIGESTERS:
            raise FormatError(f"unknown digest algorithm {blob.digest_algo}", entry=what)
        if blob.ci_compressed_size > blob.ci_uncompressed_size:
            raise FormatError("ci compressed size exceeds uncompressed size", entry=what)
        per = c.CI_V2_SIZE if blob.features & c.BF_CHUNK_INFO_V2 else c.CI_V1_SIZE
        # Zran and batch blobs append their context tables to the ci array (``RafsV6Blob::validate``).
        tables = blob.features & c.BF_CHUNK_INFO_V2 and blob.features & (c.BF_ZRAN | c.BF_BATCH)
        if (
            (blob.ci_uncompressed_size < blob.chunk_count * per)
            if tables
            else (blob.ci_uncompressed_size != blob.chunk_count * per)
        ):
            raise FormatError(
                f"ci_uncompressed_size {blob.ci_uncompressed_size} != {blob.chunk_count}*{per}", entry=what
            )
    seen: set[str] = set()
    for i, dev in enumerate(devices):
        what = f"device slot {i}"
        if len(dev.blob_id) != 64:
            raise FormatError(f"device blob id {dev.blob_id!r} is not 64 characters", entry=what)
        if dev.blocks == 0:
            raise FormatError("device has 0 blocks", entry=what)
        if dev.blob_id in seen:
            raise FormatError(f"duplicate device blob id {dev.blob_id}", entry=what)
        seen.add(dev.blob_id)
    if blobs and len(devices) != len(blobs):
        raise FormatError(f"{len(devices)} device slots for {len(blobs)} blobs", entry="device table")


def _read_inode(data: bytes, sb: SuperBlock, ext: ExtSuperBlock, nid: int, path: bytes) -> InodeRecord:
    what = path.decode("utf-8", "replace")
    off = sb.meta_blkaddr * c.BLOCK_SIZE + nid * 32
    if off + 32 > len(data):
        raise FormatError(f"inode nid {nid} beyond end of file", entry=what)
    ino = Inode.decode(data[off : off + 64], what)
    rec = InodeRecord(nid, off, ino)
    xsize = xattr_area_size(ino.xattr_icount)
    body = off + ino.isize
    if body + xsize > len(data):
        raise FormatError("xattrs beyond end of file", entry=what)
    if xsize:
        rec.xattrs = decode_xattrs(data[body : body + xsize], what)
    layout = ino.datalayout
    if layout not in c.LAYOUT_NAMES:
        raise FormatError(f"unsupported data layout {layout}", entry=what)
    fmt = stat.S_IFMT(ino.mode)
    if fmt == stat.S_IFREG:
        if layout != c.LAYOUT_CHUNK_BASED:
            raise FormatError("regular file is not chunk-based", entry=what)
        count = -(-ino.size // ext.chunk_size)
        start = _round_up(body + xsize, 8)
        if start + count * 8 > len(data):
            raise FormatError("chunk indexes beyond end of file", entry=what)
        rec.chunks = [ChunkAddr.decode(data[start + i * 8 : start + i * 8 + 8]) for i in range(count)]
    elif fmt in (stat.S_IFDIR, stat.S_IFLNK):
        payload = _flat_data(data, ino, body + xsize, what)
        if fmt == stat.S_IFLNK:
            rec.symlink = payload
        else:
            rec.dirents = _decode_dir(payload, what)
    return rec


def _flat_data(data: bytes, ino: Inode, tail_at: int, what: str) -> bytes:
    size = ino.size
    if size > 1 << 32:
        raise FormatError(f"absurd inode size {size}", entry=what)
    if ino.datalayout == c.LAYOUT_FLAT_PLAIN:
        start = ino.i_u * c.BLOCK_SIZE
        if start + size > len(data):
            raise FormatError("inode data beyond end of file", entry=what)
        return data[start : start + size]
    if ino.datalayout != c.LAYOUT_FLAT_INLINE:
        raise FormatError("directory or symlink is not flat", entry=what)
    full = size - size % c.BLOCK_SIZE
    tail = size % c.BLOCK_SIZE
    start = ino.i_u * c.BLOCK_SIZE
    if start + full > len(data) or tail_at + tail > len(data):
        raise FormatError("inode data beyond end of file", entry=what)
    if tail and tail_at % c.BLOCK_SIZE + tail > c.BLOCK_SIZE:
        raise FormatError("inline tail crosses a block boundary", entry=what)
    return data[start : start + full] + data[tail_at : tail_at + tail]


def _decode_dir(payload: bytes, what: str) -> list[Dirent]:
    out: list[Dirent] = []
    for pos in range(0, len(payload), c.BLOCK_SIZE):
        out.extend(decode_dirent_block(payload[pos : pos + c.BLOCK_SIZE], what))
    names = [d.name for d in out]
    if names != sorted(names):
        raise FormatError("directory entries are not sorted", entry=what)
    if len(set(names)) != len(names):
        raise FormatError("duplicate directory entries", entry=what)
    return out


def _walk(
    data: bytes,
    sb: SuperBlock,
    ext: ExtSuperBlock,
    nid: int,
    path: bytes,
    inodes: dict[int, InodeRecord],
    entries: list[tuple[bytes, int]],
    depth: int,
    active: set[int],
) -> None:
    what = path.decode("utf-8", "replace")
    if depth > _MAX_DEPTH:
        raise FormatError("directory tree too deep", entry=what)
    rec = inodes.get(nid)
    if rec is None:
        rec = _read_inode(data, sb, ext, nid, path)
        inodes[nid] = rec
    entries.append((path, nid))
    if not stat.S_ISDIR(rec.mode):
        return
    if nid in active:
        raise FormatError("directory cycle", entry=what)
    active.add(nid)
    for d in rec.dirents:
        if d.name in (b".", b".."):
            continue
        if b"/" in d.name or b"\0" in d.name:
            raise FormatError(f"invalid name {d.name!r}", entry=what)
        child = path + d.name if path == b"/" else path + b"/" + d.name
        _walk(data, sb, ext, d.nid, child, inodes, entries, depth + 1, active)
    active.discard(nid)


def _check_inodes(bs: Bootstrap) -> None:
    nblobs = len(bs.blobs)
    for path, nid in bs.entries:
        rec = bs.inodes[nid]
        what = path.decode("utf-8", "replace")
        if stat.S_ISDIR(rec.mode):
            names = {d.name: d.nid for d in rec.dirents}
            if names.get(b".") != nid:
                raise FormatError("'.' does not point to the directory itself", entry=what)
            if b".." not in names:
                raise FormatError("missing '..'", entry=what)
        for addr in rec.chunks:
            if not 1 <= addr.device_id <= nblobs:
                raise FormatError(f"chunk refers to device {addr.device_id} of {nblobs}", entry=what)
            blob = bs.blobs[addr.blob_index]
            if addr.ci_index >= blob.chunk_count:
                raise FormatError(
                    f"chunk index {addr.ci_index} >= chunk_count {blob.chunk_count}", entry=what
                )
            dev = bs.devices[addr.blob_index]
            if addr.blkaddr >= dev.blocks:
                raise FormatError(f"chunk block {addr.blkaddr} beyond device blocks {dev.blocks}", entry=what)


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


def file_type_name(mode: int) -> str:
    return {
        stat.S_IFREG: "reg",
        stat.S_IFDIR: "dir",
        stat.S_IFLNK: "symlink",
        stat.S_IFCHR: "chr",
        stat.S_IFBLK: "blk",
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "sock",
    }.get(stat.S_IFMT(mode), "unknown")


def chunk_ranges(bs: Bootstrap, rec: InodeRecord) -> Iterator[tuple[int, int, int]]:
    """(blob index, uncompressed offset, length) of each chunk of a regular file, in file order."""
    remaining = rec.inode.size
    for addr in rec.chunks:
        n = min(bs.chunk_size, remaining)
        yield addr.blob_index, addr.blkaddr * c.BLOCK_SIZE, n
        remaining -= n


def read_file(
    bs: Bootstrap,
    path: str,
    read_range: Callable[[int, int, int], bytes],
    metas: dict[int, BlobMeta] | None = None,
    *,
    read_meta: Callable[[int, int, int], bytes] | None = None,
) -> bytes:
    """A regular file's content through the bootstrap: each chunk is fetched from its blob with
    ``read_range(blob_index, offset, length)`` (what nydusd asks of a registry), decompressed and checked
    against the chunk table's digest.

    A blob with batch or zran chunks has its blob meta fetched first, as nydusd does, since only that
    locates such a chunk; ``metas`` (blob index -> meta) keeps them across calls. The meta is read with
    ``read_meta`` where given: an OCI-ref blob's lives in its Nydus layer (``blob_meta_digest``), while
    ``read_range`` reads the original gzip layer its chunks are inflated from."""
    wanted = "/" + path.strip("/")
    try:
        rec = bs.inode_at(wanted.encode("utf-8", "surrogateescape"))
    except KeyError:
        raise FormatError("not in the bootstrap", entry=path) from None
    if not stat.S_ISREG(rec.inode.mode):
        raise FormatError("not a regular file in the bootstrap", entry=path)
    by_start = {(ch.blob_index, ch.uncompressed_offset): ch for ch in bs.chunk_table}
    compressors = [c.COMPRESSORS[entry.compression_algo] for entry in bs.blobs]
    digesters = [c.DIGESTERS[entry.digest_algo] for entry in bs.blobs]
    parts = []
    for blob_index, offset, length in chunk_ranges(bs, rec):
        ch = by_start.get((blob_index, offset))
        if ch is None:
            raise FormatError(f"no chunk of blob {blob_index} starts at {offset}", entry=path)
        meta = _blob_meta(bs, blob_index, read_meta or read_range, metas if metas is not None else {})
        ci = meta.chunks[ch.index] if meta is not None and ch.index < len(meta.chunks) else None
        if meta is not None and ci is not None and is_zran_chunk(ci):
            data = meta.zran.chunk(ch.index, ci, partial(read_range, blob_index))
        elif meta is not None and ci is not None and is_batched(ci):
            unit = unit_bytes(ci, meta.batches, compressors[blob_index], partial(read_range, blob_index))
            data = slice_chunk(ci, unit)
        else:
            raw = read_range(blob_index, ch.compressed_offset, ch.compressed_size)
            data = (
                decompress(compressors[blob_index], raw, ch.uncompressed_size)
                if ch.flags & c.CHUNK_COMPRESSED
                else raw
            )
        if digest_of(digesters[blob_index], data) != ch.digest:
            raise FormatError(f"chunk at {offset} of blob {blob_index} does not match its digest", entry=path)
        parts.append(data[:length])
    return b"".join(parts)


def _blob_meta(
    bs: Bootstrap, blob_index: int, read_range: Callable[[int, int, int], bytes], metas: dict[int, BlobMeta]
) -> BlobMeta | None:
    entry = bs.blobs[blob_index]
    if not entry.features & (c.BF_BATCH | c.BF_ZRAN):
        return None
    meta = metas.get(blob_index)
    if meta is None:
        meta = read_blob_meta(read_range(blob_index, entry.ci_offset, entry.ci_compressed_size + 4096))
        if meta.header.ci_entries != entry.chunk_count or meta.header.ci_offset != entry.ci_offset:
            raise FormatError("blob meta does not match the blob table", entry=entry.blob_id)
        metas[blob_index] = meta
    return meta


def to_tree(bs: Bootstrap) -> Node:
    """The bootstrap as a ``Node`` tree (paths sharing a nid share one ``Node``); chunks keep blob indexes."""
    by_ci: dict[tuple[int, int], ChunkInfo] = {(ch.blob_index, ch.index): ch for ch in bs.chunk_table}
    nodes: dict[int, Node] = {}

    def make(nid: int, path: bytes) -> Node:
        node = nodes.get(nid)
        if node is not None:
            return node
        rec = bs.inodes[nid]
        ino = rec.inode
        node = Node(
            mode=ino.mode,
            uid=ino.uid,
            gid=ino.gid,
            mtime=ino.mtime,
            mtime_nsec=ino.mtime_nsec,
            size=ino.size if stat.S_ISREG(ino.mode) else 0,
            symlink=rec.symlink,
            xattrs=list(rec.xattrs),
        )
        if stat.S_ISCHR(ino.mode) or stat.S_ISBLK(ino.mode):
            node.rdev = ino.i_u
        for i, addr in enumerate(rec.chunks):
            info = by_ci.get((addr.blob_index, addr.ci_index))
            if info is None:
                raise FormatError(
                    f"chunk {addr.ci_index} of blob {addr.blob_index} is not in the chunk table",
                    entry=path.decode("utf-8", "replace"),
                )
            length = min(bs.chunk_size, ino.size - i * bs.chunk_size)
            if info.uncompressed_size != length or info.uncompressed_offset != addr.blkaddr * c.BLOCK_SIZE:
                raise FormatError(
                    f"chunk {i} disagrees with the chunk table", entry=path.decode("utf-8", "replace")
                )
            node.chunks.append(info.as_chunk())
        nodes[nid] = node
        for d in rec.dirents:
            if d.name in (b".", b".."):
                continue
            child_path = path.rstrip(b"/") + b"/" + d.name
            node.children[d.name] = make(d.nid, child_path)
        return node

    return make(bs.superblock.root_nid, b"/")
