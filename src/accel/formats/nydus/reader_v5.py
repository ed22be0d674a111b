"""Decoding of RAFS v5 bootstraps (the layout of nydus's ``rafs/src/metadata/layout/v5.rs``), for inspection,
validation and merging (``to_tree_v5`` gives the ``Node`` tree the writers and the merge work on)."""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.ondisk import BlobEntry, ChunkInfo
from accel.formats.nydus.tree import Node

V5_MAGIC = 0x52414653
V5_VERSION = 0x500
V5_SB_SIZE = 8192
V5_INODE_SIZE = 128
_SB_FMT = "<IIIIQQQQQIIIIQ"
_INODE_FMT = "<32sQQIIIIQQQIIIHHIIQ8s"
FLAG_SYMLINK = 0x1
FLAG_HARDLINK = 0x2
FLAG_XATTR = 0x4


@dataclass
class V5Inode:
    ino: int
    offset: int
    digest: bytes
    parent: int
    uid: int
    gid: int
    mode: int
    size: int
    flags: int
    nlink: int
    child_index: int
    child_count: int
    rdev: int
    mtime: int
    mtime_nsec: int
    name: bytes
    symlink: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[ChunkInfo] = field(default_factory=list)


@dataclass
class V5Bootstrap:
    flags: int
    block_size: int
    inodes: dict[int, V5Inode]
    blob_ids: list[str]
    prefetch: list[int]
    entries: list[tuple[bytes, int]]
    # The blob table joined with the extended blob table (chunk count, features, sizes), when present.
    blobs: list[BlobEntry] = field(default_factory=list)
    inodes_count: int = 0

    @property
    def digester(self) -> str:
        return "sha256" if self.flags & c.SF_HASH_SHA256 else "blake3"

    @property
    def compressor(self) -> str:
        return _compressor(self.flags)

    @property
    def chunk_size(self) -> int:
        return self.block_size


def _round8(n: int) -> int:
    return (n + 7) & ~7


def is_v5(data: bytes) -> bool:
    """Whether ``data`` starts with a RAFS v5 superblock (v6 has zeros there: its superblock is at 1024)."""
    return len(data) >= 8 and struct.unpack_from("<II", data) == (V5_MAGIC, V5_VERSION)


def read_bootstrap_v5(data: bytes) -> V5Bootstrap:
    """Decode a v5 bootstrap: superblock, inode table, prefetch and blob tables, inodes and chunks."""
    data = bytes(data)
    if len(data) < V5_SB_SIZE:
        raise FormatError("v5 bootstrap too small", entry="superblock")
    f = struct.unpack_from(_SB_FMT, data, 0)
    magic, version, sb_size, block_size, flags, inodes_count, itable_off, prefetch_off, blob_off = f[:9]
    itable_entries, prefetch_entries, blob_size, ext_entries, ext_off = f[9:14]
    if magic != V5_MAGIC or version != V5_VERSION or sb_size != V5_SB_SIZE:
        raise FormatError(
            f"not a RAFS v5 superblock (magic {magic:#x}, version {version:#x})", entry="superblock"
        )
    if itable_off + 4 * itable_entries > len(data) or blob_off + blob_size > len(data):
        raise FormatError("v5 tables beyond end of file", entry="superblock")
    table = struct.unpack_from(f"<{itable_entries}I", data, itable_off)
    prefetch = (
        list(struct.unpack_from(f"<{prefetch_entries}I", data, prefetch_off)) if prefetch_entries else []
    )
    blob_ids = _blob_ids(data[blob_off : blob_off + blob_size])
    if ext_entries and (ext_entries < len(blob_ids) or ext_off + 64 * ext_entries > len(data)):
        raise FormatError("v5 extended blob table too short or beyond end of file", entry="superblock")
    blobs = []
    for index, blob_id in enumerate(blob_ids):
        entry = BlobEntry(
            blob_id=blob_id,
            blob_index=index,
            chunk_size=block_size,
            compression_algo=c.COMPRESSOR_IDS.get(_compressor(flags), 0),
            digest_algo=1 if flags & c.SF_HASH_SHA256 else 0,
        )
        if ext_entries:
            entry.chunk_count, entry.features, entry.uncompressed_size, entry.compressed_size = (
                struct.unpack_from("<IIQQ", data, ext_off + 64 * index)
            )
        blobs.append(entry)
    inodes: dict[int, V5Inode] = {}
    for index in range(itable_entries):
        off = table[index] << 3
        if off == 0:
            continue
        inodes[index + 1] = _read_inode(data, index + 1, off)
    if 1 not in inodes:
        raise FormatError("v5 root inode missing", entry="/")
    entries: list[tuple[bytes, int]] = []
    _walk(inodes, 1, b"/", entries, 0)
    entries.sort(key=lambda e: e[0])
    return V5Bootstrap(flags, block_size, inodes, blob_ids, prefetch, entries, blobs, inodes_count)


def _compressor(flags: int) -> str:
    for name, bit in c.SUPER_COMPRESSION_FLAG.items():
        if flags & bit:
            return name
    return "none"


def _blob_ids(raw: bytes) -> list[str]:
    """Records ``prefetch_offset u32, prefetch_size u32, blob id``, joined by NUL, zero-padded to 8."""
    out = []
    pos = 0
    while pos + 8 < len(raw):
        end = raw.find(b"\0", pos + 8)
        end = len(raw) if end == -1 else end
        blob_id = raw[pos + 8 : end]
        if not blob_id:
            break
        out.append(blob_id.decode("ascii", "replace"))
        pos = end + 1
    return out


def _read_inode(data: bytes, ino: int, off: int) -> V5Inode:
    if off + V5_INODE_SIZE > len(data):
        raise FormatError(f"v5 inode {ino} beyond end of file")
    f = struct.unpack_from(_INODE_FMT, data, off)
    digest, parent, i_ino, uid, gid, _proj, mode, size, _blocks, flags = f[:10]
    nlink, child_index, child_count, name_size, symlink_size, rdev, mtime_nsec, mtime = f[10:18]
    pos = off + V5_INODE_SIZE
    name = data[pos : pos + name_size]
    pos += _round8(name_size)
    node = V5Inode(
        i_ino, off, digest, parent, uid, gid, mode, size, flags, nlink, child_index, child_count, rdev, mtime,
        mtime_nsec, name,
    )  # fmt: skip
    if flags & FLAG_SYMLINK:
        node.symlink = data[pos : pos + symlink_size]
        pos += _round8(symlink_size)
    if flags & FLAG_XATTR:
        (xsize,) = struct.unpack_from("<Q", data, pos)
        node.xattrs = _xattrs(data[pos + 8 : pos + 8 + xsize], name)
        pos += 8 + _round8(xsize)
    if stat.S_ISREG(mode):
        if pos + 80 * child_count > len(data):
            raise FormatError("v5 chunks beyond end of file", entry=name.decode("utf-8", "replace"))
        node.chunks = [ChunkInfo.decode(data[pos + 80 * i : pos + 80 * (i + 1)]) for i in range(child_count)]
    return node


def _xattrs(raw: bytes, name: bytes) -> dict[bytes, bytes]:
    out = {}
    pos = 0
    while pos + 4 <= len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        pair = raw[pos + 4 : pos + 4 + size]
        if len(pair) != size or b"\0" not in pair:
            raise FormatError("bad v5 xattr", entry=name.decode("utf-8", "replace"))
        key, value = pair.split(b"\0", 1)
        out[key] = value
        pos += 4 + size
    return out


def _walk(
    inodes: dict[int, V5Inode], ino: int, path: bytes, out: list[tuple[bytes, int]], depth: int
) -> None:
    if depth > 4096:
        raise FormatError("v5 tree too deep", entry=path.decode("utf-8", "replace"))
    out.append((path, ino))
    node = inodes[ino]
    if not stat.S_ISDIR(node.mode):
        return
    for child in range(node.child_index, node.child_index + node.child_count):
        sub = inodes.get(child)
        if sub is None or child <= ino:
            raise FormatError(f"bad v5 child inode {child}", entry=path.decode("utf-8", "replace"))
        _walk(inodes, child, path.rstrip(b"/") + b"/" + sub.name, out, depth + 1)


def to_tree_v5(bs: V5Bootstrap) -> Node:
    """The bootstrap as a ``Node`` tree: names sharing a regular file's ``i_ino`` share one ``Node`` (v5
    stores a hardlink as one record per name). ``rdev`` is kept as stored, whatever the file type, so the
    v5 writer gives it back unchanged."""
    files: dict[int, Node] = {}

    def make(index: int) -> Node:
        rec = bs.inodes[index]
        if stat.S_ISREG(rec.mode) and rec.ino in files:
            return files[rec.ino]
        node = Node(
            mode=rec.mode,
            uid=rec.uid,
            gid=rec.gid,
            mtime=rec.mtime,
            mtime_nsec=rec.mtime_nsec,
            size=rec.size if stat.S_ISREG(rec.mode) else 0,
            rdev=rec.rdev,
            symlink=rec.symlink,
            xattrs=list(rec.xattrs.items()),
            chunks=[ch.as_chunk() for ch in rec.chunks],
        )
        if stat.S_ISREG(rec.mode):
            files[rec.ino] = node
        return node

    # ``read_bootstrap_v5`` already checked that children have larger indexes, so this ends; entries are
    # in path order, so a directory comes before what is under it.
    by_path: dict[bytes, Node] = {}
    for path, index in bs.entries:
        node = make(index)
        by_path[path] = node
        if path != b"/":
            parent, _, name = path.rpartition(b"/")
            by_path[parent or b"/"].children[name] = node
    return by_path[b"/"]
