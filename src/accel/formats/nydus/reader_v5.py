"""Decoding of RAFS v5 bootstraps (the layout of nydus's ``rafs/src/metadata/layout/v5.rs``): read-only, for
inspection and validation."""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.ondisk import ChunkInfo

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

    @property
    def digester(self) -> str:
        return "sha256" if self.flags & c.SF_HASH_SHA256 else "blake3"


def _round8(n: int) -> int:
    return (n + 7) & ~7


def read_bootstrap_v5(data: bytes) -> V5Bootstrap:
    """Decode a v5 bootstrap: superblock, inode table, prefetch and blob tables, inodes and chunks."""
    data = bytes(data)
    if len(data) < V5_SB_SIZE:
        raise FormatError("v5 bootstrap too small", entry="superblock")
    f = struct.unpack_from(_SB_FMT, data, 0)
    magic, version, sb_size, block_size, flags, _inodes_count, itable_off, prefetch_off, blob_off = f[:9]
    itable_entries, prefetch_entries, blob_size = f[9:12]
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
    return V5Bootstrap(flags, block_size, inodes, blob_ids, prefetch, entries)


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
