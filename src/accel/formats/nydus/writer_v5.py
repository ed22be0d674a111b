"""Laying out and writing a RAFS v5 bootstrap from a ``Node`` tree, as nydus does it
(``builder/src/core/v5.rs``, ``builder/src/core/bootstrap.rs``, ``rafs/src/metadata/layout/v5.rs``).

The file is: the 8 KiB superblock, the inode table (one u32 per inode index, offset >> 3), the prefetch
table (inode numbers), the blob table (``prefetch_offset u32, prefetch_size u32, id``, NUL-separated), the
extended blob table (64 B per blob), then every inode in depth-first pre-order, each followed by its name,
symlink target, xattr table and, for a regular file, its ``RafsV5ChunkInfo`` records. Everything is 8-byte
aligned. Inode indexes are given per directory (its children get consecutive indexes before any
subdirectory is entered), which is what lets a directory name its children by ``child_index`` and count.

One thing nydus itself does not make deterministic: the order of a file's xattrs (a Rust ``HashMap``).
Here they are written in the order of ``Node.xattrs``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.chunkcodec import digest_of
from accel.formats.nydus.ondisk import BlobEntry, ChunkInfo
from accel.formats.nydus.tree import Node
from accel.formats.nydus.writer import prefetch_targets

MAGIC = 0x52414653
VERSION = 0x500
SUPERBLOCK_SIZE = 8192
INODE_SIZE = 128
EXT_BLOB_ENTRY_SIZE = 64
FLAG_SYMLINK = 0x1
FLAG_HARDLINK = 0x2
FLAG_XATTR = 0x4
# What nydus's tar builder stores as ``i_rdev`` of anything but a device or fifo (``tarball.rs``).
NO_RDEV = 0xFFFF_FFFF
_SB_FMT = "<IIIIQQQQQIIIIQ"
_INODE_FMT = "<32sQQIIIIQQQIIIHHIIQ8s"
# A directory's ``i_size`` is synthetic in v5: 8 bytes per entry on top of the name (``v5_set_dir_size``).
_VIRTUAL_ENTRY_SIZE = 8


@dataclass
class V5WriteOptions:
    """What goes into the superblock besides the tree (see ``BuildContext``), plus two switches for what
    builders from before 2023 did differently (the v5 fixture is one)."""

    chunk_size: int = c.DEFAULT_CHUNK_SIZE
    compressor: str = "zstd"
    digester: str = "blake3"
    explicit_uid_gid: bool = True
    prefetch: tuple[bytes, ...] = (b"/",)
    with_crc32: bool = False
    hardlink_flag: bool = True  # older builders did not set HARDLINK on hardlinked files
    count_root_inode: bool = True  # older builders left the root out of ``s_inodes_count``
    index_order: bool = False  # older builders wrote the inodes in index order, not depth-first


@dataclass(eq=False)
class _Entry:
    """One inode record: a hardlinked file has one record per name, all with the first one's ``i_ino``."""

    node: Node
    name: bytes
    index: int
    ino: int = 0
    parent_ino: int = 0
    child_index: int = 0
    children: list[_Entry] | None = None
    digest: bytes = b""
    offset: int = 0


def _round8(n: int) -> int:
    return (n + 7) & ~7


def write_bootstrap_v5(root: Node, blobs: list[BlobEntry], opts: V5WriteOptions) -> bytes:
    """Lay out ``root`` and serialise the v5 bootstrap; chunk ``blob_index`` values index ``blobs``."""
    if not root.is_dir:
        raise FormatError("the root is not a directory", entry="/")
    if opts.compressor not in c.SUPER_COMPRESSION_FLAG or opts.digester not in c.SUPER_DIGEST_FLAG:
        raise FormatError(f"unsupported compressor/digester {opts.compressor}/{opts.digester}")
    for i, blob in enumerate(blobs):
        if blob.blob_index != i:
            raise FormatError(f"blob {blob.blob_id} has index {blob.blob_index}, expected {i}")
        if not blob.blob_id or b"\0" in blob.blob_id.encode():
            raise FormatError(f"bad blob id {blob.blob_id!r}")
    links = _link_counts(root)
    top = _Entry(root, b"/", 1, ino=1)
    entries = [top]
    unique = _number(top, entries, links)
    _digest(top, opts.digester)

    n = len(entries)
    itable_size = _round8(4 * n)
    prefetch = [e.ino for e in _prefetch_entries(top, opts.prefetch)]
    prefetch_size = _round8(4 * len(prefetch))
    blob_raw = b"\0".join(struct.pack("<II", 0, 0) + b.blob_id.encode() for b in blobs)
    blob_table = blob_raw + bytes(_round8(len(blob_raw)) - len(blob_raw))
    ext_table = b"".join(
        struct.pack("<IIQQ", b.chunk_count, b.features, b.uncompressed_size, b.compressed_size) + bytes(40)
        for b in blobs
    )
    prefetch_off = SUPERBLOCK_SIZE + itable_size
    blob_off = prefetch_off + prefetch_size
    ext_off = blob_off + len(blob_table)
    inodes_off = ext_off + len(ext_table)

    body = bytearray()
    has_xattr = False
    for e in entries if opts.index_order else _preorder(top):
        e.offset = inodes_off + len(body)
        body += _encode_inode(e, links, opts)
        has_xattr |= bool(e.node.xattrs)

    flags = c.SUPER_COMPRESSION_FLAG[opts.compressor] | c.SUPER_DIGEST_FLAG[opts.digester]
    if opts.explicit_uid_gid:
        flags |= c.SF_EXPLICIT_UID_GID
    if has_xattr:
        flags |= c.SF_HAS_XATTR
    sb = struct.pack(
        _SB_FMT,
        MAGIC,
        VERSION,
        SUPERBLOCK_SIZE,
        opts.chunk_size,
        flags,
        unique if opts.count_root_inode else unique - 1,
        SUPERBLOCK_SIZE,
        prefetch_off,
        blob_off,
        n,
        len(prefetch),
        len(blob_table),
        len(blobs),
        ext_off,
    )
    out = bytearray(sb + bytes(SUPERBLOCK_SIZE - len(sb)))
    table = [0] * n
    for e in entries:
        table[e.index - 1] = e.offset >> 3
    out += struct.pack(f"<{n}I", *table) + bytes(itable_size - 4 * n)
    out += struct.pack(f"<{len(prefetch)}I", *prefetch) + bytes(prefetch_size - 4 * len(prefetch))
    out += blob_table + ext_table + body
    return bytes(out)


def _link_counts(root: Node) -> dict[int, int]:
    """Names per regular file (a hardlinked file is one ``Node`` under several names)."""
    counts: dict[int, int] = {}
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise FormatError("a directory appears twice in the tree")
        seen.add(id(node))
        for name, child in node.children.items():
            if child.is_dir:
                stack.append(child)
            elif child.is_reg:
                counts[id(child)] = counts.get(id(child), 0) + 1
            elif counts.get(id(child), 0):
                raise FormatError(
                    "only regular files can be hardlinked", entry=name.decode("utf-8", "replace")
                )
            else:
                counts[id(child)] = 1
    return counts


def _number(top: _Entry, entries: list[_Entry], links: dict[int, int]) -> int:
    """``Bootstrap::build_rafs``: indexes, inode numbers and parents; returns the count of distinct inodes."""
    first_ino: dict[int, int] = {}
    unique = 1
    stack = [top]
    while stack:
        parent = stack.pop()
        parent.child_index = len(entries) + 1
        parent.children = []
        subdirs = []
        for name in sorted(parent.node.children):
            child = parent.node.children[name]
            e = _Entry(child, name, len(entries) + 1, parent_ino=parent.ino)
            entries.append(e)
            parent.children.append(e)
            known = first_ino.get(id(child)) if child.is_reg else None
            if known is not None:
                e.ino = known
            else:
                e.ino = e.index
                unique += 1
                if child.is_reg:
                    first_ino[id(child)] = e.ino
            if child.is_dir:
                subdirs.append(e)
        # Depth first over directories, in name order, as the recursion of ``build_rafs`` goes.
        stack.extend(reversed(subdirs))
    return unique


def _digest(top: _Entry, digester: str) -> None:
    """``i_digest``: of the chunk digests (file), the target (symlink), the children's digests
    (directory, bottom-up), or of nothing."""
    order = _preorder(top)
    for e in reversed(order):
        node = e.node
        if e.children is not None:
            data = b"".join(ch.digest for ch in e.children)
        elif node.is_reg:
            data = b"".join(ch.digest for ch in node.chunks)
        elif node.is_symlink:
            data = node.symlink or b""
        else:
            data = b""
        e.digest = digest_of(digester, data)


def _preorder(top: _Entry) -> list[_Entry]:
    out: list[_Entry] = []
    stack = [top]
    while stack:
        e = stack.pop()
        out.append(e)
        if e.children:
            stack.extend(reversed(e.children))
    return out


def _prefetch_entries(top: _Entry, patterns: tuple[bytes, ...]) -> list[_Entry]:
    by_node: dict[int, _Entry] = {}
    for e in _preorder(top):
        by_node.setdefault(id(e.node), e)
    return [by_node[id(node)] for node in prefetch_targets(top.node, patterns)]


def _xattr_table(xattrs: list[tuple[bytes, bytes]]) -> bytes:
    pairs = b"".join(struct.pack("<I", len(k) + 1 + len(v)) + k + b"\0" + v for k, v in xattrs)
    return pairs + bytes(_round8(len(pairs)) - len(pairs))


def _encode_inode(e: _Entry, links: dict[int, int], opts: V5WriteOptions) -> bytes:
    node = e.node
    xattrs = _xattr_table(node.xattrs) if node.xattrs else b""
    flags = 0
    symlink = b""
    nlink = 1
    child_index = child_count = 0
    if e.children is not None:
        names = sum(len(ch.name) + _VIRTUAL_ENTRY_SIZE for ch in e.children)
        size = max(4096, -(-names // 4096) * 4096)
        nlink = 2 + sum(1 for ch in e.children if ch.node.is_dir)
        child_index, child_count = e.child_index, len(e.children)
    elif node.is_reg:
        size = node.size
        nlink = links.get(id(node), 1)
        child_count = len(node.chunks)
        if nlink > 1 and opts.hardlink_flag:
            flags |= FLAG_HARDLINK
    elif node.is_symlink:
        symlink = node.symlink or b""
        size = len(symlink)
        flags |= FLAG_SYMLINK
    else:
        size = node.size
    if xattrs:
        flags |= FLAG_XATTR
    if len(e.name) > 0xFFFF or len(symlink) > 0xFFFF:
        raise FormatError("name or symlink target too long", entry=e.name.decode("utf-8", "replace"))
    blocks = -(-(size + len(xattrs)) // 512)
    out = bytearray(
        struct.pack(
            _INODE_FMT,
            e.digest,
            e.parent_ino,
            e.ino,
            node.uid,
            node.gid,
            0,
            node.mode,
            size,
            blocks,
            flags,
            nlink,
            child_index,
            child_count,
            len(e.name),
            len(symlink),
            node.rdev & 0xFFFF_FFFF,
            node.mtime_nsec,
            node.mtime,
            bytes(8),
        )
    )
    out += e.name + bytes(_round8(len(e.name)) - len(e.name))
    out += symlink + bytes(_round8(len(symlink)) - len(symlink))
    if xattrs:
        out += struct.pack("<Q", _xattrs_size(node.xattrs)) + xattrs
    if node.is_reg:
        for i, ch in enumerate(node.chunks):
            cflags = c.CHUNK_COMPRESSED if ch.compressed else 0
            if ch.has_crc32 and opts.with_crc32:
                cflags |= c.CHUNK_HAS_CRC32
            out += ChunkInfo(
                digest=ch.digest,
                blob_index=ch.blob_index,
                flags=cflags,
                compressed_size=ch.compressed_size,
                uncompressed_size=ch.uncompressed_size,
                compressed_offset=ch.compressed_offset,
                uncompressed_offset=ch.uncompressed_offset,
                file_offset=i * opts.chunk_size,
                index=ch.ci_index,
                crc32=ch.crc32 if opts.with_crc32 else 0,
            ).encode()
    return bytes(out)


def _xattrs_size(xattrs: list[tuple[bytes, bytes]]) -> int:
    return sum(4 + len(k) + 1 + len(v) for k, v in xattrs)
