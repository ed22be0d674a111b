"""Laying out and writing a RAFS v6 bootstrap from a ``Node`` tree, byte for byte as nydus does
(``builder/src/core/v6.rs``, ``rafs/src/metadata/layout/v6.rs``)."""

from __future__ import annotations

import stat
import struct
from collections import deque
from dataclasses import dataclass, field

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.ondisk import (
    BlobEntry,
    ChunkAddr,
    ChunkInfo,
    Device,
    Dirent,
    ExtSuperBlock,
    Inode,
    SuperBlock,
    dirent_blocks,
    dirent_size,
    encode_xattrs,
    xattr_icount,
)
from accel.formats.nydus.tree import Node

_FILE_TYPES = {
    stat.S_IFREG: c.FT_REG,
    stat.S_IFDIR: c.FT_DIR,
    stat.S_IFCHR: c.FT_CHR,
    stat.S_IFBLK: c.FT_BLK,
    stat.S_IFIFO: c.FT_FIFO,
    stat.S_IFSOCK: c.FT_SOCK,
    stat.S_IFLNK: c.FT_SYMLINK,
}


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


class Layout:
    """``BootstrapContext`` of nydus's ``builder/src/core/context.rs``: the write offset plus lists of partly
    used blocks."""

    def __init__(self, offset: int = c.BLOCK_SIZE) -> None:
        self.offset = offset
        self.avail: list[deque[int]] = [deque() for _ in range(c.BLOCK_SIZE // 32)]
        # Bit i set <=> avail[i] is not empty: finding the first fitting list is one bit operation
        # instead of a scan over 128 lists per inode.
        self.nonempty = 0

    def append_avail(self, off: int) -> None:
        rem = off % c.BLOCK_SIZE
        if rem:
            idx = (c.BLOCK_SIZE - rem) // 32
            self.avail[idx].append(off - rem)
            self.nonempty |= 1 << idx

    def alloc_avail(self, size: int) -> int:
        """Offset of a fragment with ``size`` free bytes, or 0 when there is none."""
        if size >= c.BLOCK_SIZE:
            return 0
        min_idx = -(-size // 32)
        fits = self.nonempty >> min_idx
        if not fits:
            return 0
        idx = min_idx + (fits & -fits).bit_length() - 1
        free = self.avail[idx]
        start = free.popleft() + c.BLOCK_SIZE - idx * 32
        if not free:
            self.nonempty &= ~(1 << idx)
        self.append_avail(start + min_idx * 32)
        return start

    def align(self, n: int) -> None:
        self.offset = _round_up(self.offset, n)

    def place_regular(self, isize: int, nchunks: int) -> int:
        total = _round_up(isize, 8) + nchunks * c.CHUNK_ADDR_SIZE
        off = self.alloc_avail(total)
        if off == 0:
            off = self.offset
            self.offset += total
        self.align(32)
        return off

    def place_special(self, isize: int) -> int:
        off = self.offset
        self.offset += isize
        self.align(32)
        return off

    def place_with_tail(self, isize: int, d_size: int) -> tuple[int, int, int]:
        """(inode offset, offset of the full data blocks, data layout) of a directory or symlink."""
        tail = d_size % c.BLOCK_SIZE
        if tail != 0 and isize + tail <= c.BLOCK_SIZE:
            off = self.alloc_avail(isize + tail)
            if off == 0:
                if c.BLOCK_SIZE - self.offset % c.BLOCK_SIZE < isize + tail:
                    self.append_avail(self.offset)
                    self.align(c.BLOCK_SIZE)
                off = self.offset
                self.offset += isize + tail
            if d_size != tail:
                self.append_avail(self.offset)
                self.align(c.BLOCK_SIZE)
            data_off = self.offset
            self.offset += d_size - tail
            layout = c.LAYOUT_FLAT_INLINE
        else:
            off = self.alloc_avail(isize)
            if off == 0:
                off = self.offset
                self.offset += isize
            self.append_avail(self.offset)
            self.align(c.BLOCK_SIZE)
            data_off = self.offset
            self.offset += d_size
            self.align(c.BLOCK_SIZE)
            layout = c.LAYOUT_FLAT_PLAIN
        self.align(32)
        return off, data_off, layout


@dataclass
class WriteOptions:
    """What goes into the superblocks besides the tree (see ``BuildContext``)."""

    chunk_size: int = c.DEFAULT_CHUNK_SIZE
    compressor: str = "zstd"
    digester: str = "blake3"
    explicit_uid_gid: bool = True
    force_has_xattr: bool = False
    prefetch: tuple[bytes, ...] = (b"/",)
    encryption_none_flag: bool = True
    mapped_blkaddr_align: int = c.MAPPED_BLKADDR_ALIGN
    root_ino: int = 1
    contiguous_chunk_format: bool = True
    with_crc32: bool = False


@dataclass
class _Placed:
    offset: int = 0
    ino: int = 0
    layout: int = 0
    data_off: int = 0
    xattr_area: bytes = b""
    nlink: int = 1
    d_size: int = 0
    dirents: list[tuple[bytes, Node]] = field(default_factory=list)


def write_bootstrap(root: Node, blobs: list[BlobEntry], opts: WriteOptions) -> bytes:
    """Lay out ``root`` and serialise the whole bootstrap; chunk ``blob_index`` values index ``blobs``."""
    if not root.is_dir:
        raise FormatError("the root is not a directory", entry="/")
    if opts.compressor not in c.SUPER_COMPRESSION_FLAG or opts.digester not in c.SUPER_DIGEST_FLAG:
        raise FormatError(f"unsupported compressor/digester {opts.compressor}/{opts.digester}")
    paths = _count_links(root)
    placed: dict[int, _Placed] = {}
    layout = Layout()
    next_index = [1]
    root_state = _Placed(ino=opts.root_ino)
    placed[id(root)] = root_state
    _build(root, root, layout, placed, paths, next_index)
    inos = next_index[0]

    nblobs = len(blobs)
    blob_table_offset = _round_up(c.DEVT_OFFSET + c.DEVICE_SIZE * nblobs, c.BLOCK_SIZE)
    blob_table_size = c.BLOB_ENTRY_SIZE * nblobs
    prefetch = _prefetch_nids(root, placed, opts.prefetch) if nblobs else []
    prefetch_offset = blob_table_offset + blob_table_size if prefetch else 0
    meta_addr = (
        _round_up(blob_table_offset + blob_table_size + 4 * len(prefetch), c.BLOCK_SIZE) if nblobs else 0
    )
    # ``layout`` started at 4096 for the root, so nid = original offset / 32 and byte = meta_addr + original.
    area_end = meta_addr + layout.offset
    out = bytearray(_round_up(area_end, c.BLOCK_SIZE))

    has_xattr = opts.force_has_xattr
    chunk_cache: dict[tuple[bytes, int], ChunkInfo] = {}
    # Dump order is breadth-first (``walk_bfs``); it decides which duplicate chunk's file_offset is kept.
    queue: deque[Node] = deque([root])
    while queue:
        node = queue.popleft()
        st = placed[id(node)]
        has_xattr |= bool(st.xattr_area)
        _dump_node(out, node, st, placed, meta_addr, opts, chunk_cache)
        queue.extend(node.children[name] for name in sorted(node.children))

    chunk_table_offset = len(out)
    for key in sorted(chunk_cache):
        out += chunk_cache[key].encode()
    chunk_table_size = len(out) - chunk_table_offset
    out += bytes(-len(out) % c.BLOCK_SIZE)

    devices = []
    pos = len(out)
    total_blocks = 0
    for blob in blobs:
        if len(blob.blob_id) > 64 or not blob.blob_id:
            raise FormatError(f"bad blob id {blob.blob_id!r}")
        blocks = blob.uncompressed_size // c.BLOCK_SIZE
        if opts.mapped_blkaddr_align:
            mapped = _round_up(pos, opts.mapped_blkaddr_align) // c.BLOCK_SIZE
            pos = (mapped + blocks) * c.BLOCK_SIZE
        else:
            mapped = 0
        total_blocks += blocks
        devices.append(Device(blob.blob_id, blocks, mapped))

    flags = c.SUPER_COMPRESSION_FLAG[opts.compressor] | c.SUPER_DIGEST_FLAG[opts.digester]
    if opts.encryption_none_flag:
        flags |= c.SF_ENCRYPTION_NONE
    if opts.explicit_uid_gid:
        flags |= c.SF_EXPLICIT_UID_GID
    if has_xattr:
        flags |= c.SF_HAS_XATTR
    if all(b.features & c.BF_INLINED_CHUNK_DIGEST for b in blobs):
        flags |= c.SF_INLINED_CHUNK_DIGEST
    sb = SuperBlock(
        inos=inos,
        blocks=total_blocks,
        meta_blkaddr=meta_addr // c.BLOCK_SIZE,
        extra_devices=nblobs,
        root_nid=root_state.offset // 32,
    )
    ext = ExtSuperBlock(
        flags=flags,
        blob_table_offset=blob_table_offset,
        blob_table_size=blob_table_size,
        chunk_size=opts.chunk_size,
        chunk_table_offset=chunk_table_offset,
        chunk_table_size=chunk_table_size,
        prefetch_table_offset=prefetch_offset,
        prefetch_table_size=4 * len(prefetch),
    )
    out[c.SB_OFFSET : c.SB_OFFSET + SuperBlock.SIZE] = sb.encode()
    out[c.EXT_SB_OFFSET : c.EXT_SB_OFFSET + ExtSuperBlock.SIZE] = ext.encode()
    for i, dev in enumerate(devices):
        out[c.DEVT_OFFSET + i * 128 : c.DEVT_OFFSET + (i + 1) * 128] = dev.encode()
    for i, blob in enumerate(blobs):
        if blob.blob_index != i:
            raise FormatError(f"blob {blob.blob_id} has index {blob.blob_index}, expected {i}")
        start = blob_table_offset + i * c.BLOB_ENTRY_SIZE
        out[start : start + c.BLOB_ENTRY_SIZE] = blob.encode()
    if prefetch:
        struct.pack_into(f"<{len(prefetch)}I", out, prefetch_offset, *prefetch)
    return bytes(out)


def _prefetch_nids(root: Node, placed: dict[int, _Placed], patterns: tuple[bytes, ...]) -> list[int]:
    return [placed[id(node)].offset // 32 for node in prefetch_targets(root, patterns)]


def prefetch_targets(root: Node, patterns: tuple[bytes, ...]) -> list[Node]:
    """The nodes named by the prefetch patterns, in pattern order; a pattern under an earlier one is
    dropped, and so is one that names nothing."""
    kept: list[bytes] = []
    nodes: list[Node] = []
    for pattern in patterns:
        parts = [p for p in pattern.split(b"/") if p and p != b"."]
        norm = b"/" + b"/".join(parts)
        if any(k == b"/" or norm == k or norm.startswith(k + b"/") for k in kept):
            continue
        node: Node | None = root
        for part in parts:
            node = node.children.get(part) if node is not None else None
        if node is None:
            continue
        kept.append(norm)
        nodes.append(node)
    return nodes


def _count_links(root: Node) -> dict[int, int]:
    counts: dict[int, int] = {}
    stack = [root]
    seen_dirs: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen_dirs:
            raise FormatError("a directory appears twice in the tree")
        seen_dirs.add(id(node))
        for child in node.children.values():
            if child.is_dir:
                stack.append(child)
            else:
                counts[id(child)] = counts.get(id(child), 0) + 1
    return counts


def _isize(xattr_area: bytes) -> int:
    return c.INODE_EXTENDED_SIZE + len(xattr_area)


def _build(
    node: Node,
    parent: Node,
    layout: Layout,
    placed: dict[int, _Placed],
    paths: dict[int, int],
    next_index: list[int],
) -> None:
    st = placed[id(node)]
    st.xattr_area = encode_xattrs(node.xattrs)
    names = sorted(node.children)
    st.dirents = [(b".", node), (b"..", parent)] + [(n, node.children[n]) for n in names]
    st.dirents.sort(key=lambda e: e[0])
    st.d_size = dirent_size([name for name, _ in st.dirents])
    st.offset, st.data_off, st.layout = layout.place_with_tail(_isize(st.xattr_area), st.d_size)
    subdirs = []
    for name in names:
        child = node.children[name]
        next_index[0] += 1
        index = next_index[0]
        cst = placed.get(id(child))
        if cst is not None:
            # A hardlink: the same inode (offset and i_ino) again.
            if not child.is_reg:
                raise FormatError(
                    "only regular files can be hardlinked", entry=name.decode("utf-8", "replace")
                )
            continue
        cst = _Placed(ino=index, nlink=paths.get(id(child), 1))
        placed[id(child)] = cst
        if child.is_dir:
            subdirs.append(child)
            continue
        cst.xattr_area = encode_xattrs(child.xattrs)
        isize = _isize(cst.xattr_area)
        if child.is_reg:
            cst.offset = layout.place_regular(isize, len(child.chunks))
            cst.layout = c.LAYOUT_CHUNK_BASED
        elif child.is_symlink:
            target = child.symlink or b""
            cst.offset, cst.data_off, cst.layout = layout.place_with_tail(isize, len(target))
        else:
            cst.offset = layout.place_special(isize)
            cst.layout = c.LAYOUT_FLAT_PLAIN
    st.nlink = 2 + len(subdirs)
    for sub in subdirs:
        _build(sub, node, layout, placed, paths, next_index)


def _dump_node(
    out: bytearray,
    node: Node,
    st: _Placed,
    placed: dict[int, _Placed],
    meta_addr: int,
    opts: WriteOptions,
    chunk_cache: dict[tuple[bytes, int], ChunkInfo],
) -> None:
    off = meta_addr + st.offset
    ino = Inode(
        compact=False,
        format=1 | st.layout << 1,
        xattr_icount=xattr_icount(len(st.xattr_area)),
        mode=node.mode & 0xFFFF,
        nlink=st.nlink,
        size=node.size,
        ino=st.ino,
        uid=node.uid,
        gid=node.gid,
        mtime=node.mtime,
        mtime_nsec=node.mtime_nsec,
    )
    body = off + _isize(st.xattr_area)
    if node.is_dir:
        ino.size = st.d_size
        ino.i_u = (meta_addr + st.data_off) // c.BLOCK_SIZE
        ents = [Dirent(placed[id(n)].offset // 32, _file_type(n), name) for name, n in st.dirents]
        blocks = dirent_blocks(ents)
        full = st.d_size - st.d_size % c.BLOCK_SIZE if st.layout == c.LAYOUT_FLAT_INLINE else st.d_size
        pos = meta_addr + st.data_off
        for i, blk in enumerate(blocks):
            if i * c.BLOCK_SIZE < full:
                out[pos + i * c.BLOCK_SIZE : pos + i * c.BLOCK_SIZE + len(blk)] = blk
            else:
                out[body : body + len(blk)] = blk
    elif node.is_symlink:
        target = node.symlink or b""
        ino.size = len(target)
        ino.i_u = (meta_addr + st.data_off) // c.BLOCK_SIZE
        where = body if st.layout == c.LAYOUT_FLAT_INLINE else meta_addr + st.data_off
        out[where : where + len(target)] = target
    elif node.is_reg:
        ino.i_u = _chunk_format(node, opts.chunk_size, opts.contiguous_chunk_format)
        pos = _round_up(body, 8)
        for i, ch in enumerate(node.chunks):
            addr = ChunkAddr(ch.blob_index + 1, ch.ci_index, ch.uncompressed_offset // c.BLOCK_SIZE)
            out[pos + i * 8 : pos + i * 8 + 8] = addr.encode()
            flags = c.CHUNK_COMPRESSED if ch.compressed else 0
            if ch.has_crc32 and opts.with_crc32:
                flags |= c.CHUNK_HAS_CRC32
            chunk_cache[(ch.digest, ch.blob_index + 1)] = ChunkInfo(
                digest=ch.digest,
                blob_index=ch.blob_index,
                flags=flags,
                compressed_size=ch.compressed_size,
                uncompressed_size=ch.uncompressed_size,
                compressed_offset=ch.compressed_offset,
                uncompressed_offset=ch.uncompressed_offset,
                file_offset=i * opts.chunk_size,
                index=ch.ci_index,
                crc32=ch.crc32 if opts.with_crc32 else 0,
            )
    else:
        ino.i_u = node.rdev & 0xFFFFFFFF
        ino.size = 0
    out[off : off + ino.isize] = ino.encode()
    out[off + ino.isize : body] = st.xattr_area


def _file_type(node: Node) -> int:
    return _FILE_TYPES.get(stat.S_IFMT(node.mode), c.FT_UNKNOWN)


def _chunk_format(node: Node, chunk_size: int, contiguous_opt: bool) -> int:
    size = chunk_size
    if contiguous_opt and node.size > chunk_size and node.chunks:
        first = node.chunks[0]
        contiguous = all(
            ch.blob_index == first.blob_index
            and ch.uncompressed_offset == first.uncompressed_offset + i * chunk_size
            for i, ch in enumerate(node.chunks)
        )
        if contiguous:
            size = 1 << (node.size - 1).bit_length()
    return c.EROFS_CHUNK_FORMAT_INDEXES | ((size.bit_length() - 1 - 12) & 0x1F)


def makedev(major: int, minor: int) -> int:
    """glibc ``makedev`` truncated to u32, as stored in ``i_u`` of device inodes."""
    return ((minor & 0xFF) | (major & 0xFFF) << 8 | (minor & ~0xFF) << 12) & 0xFFFFFFFF
