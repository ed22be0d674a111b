"""Merging per-layer bootstraps into the image bootstrap with OCI whiteouts (as nydus's
``builder/src/merge.rs`` does). RAFS v5 layers merge into a v5 bootstrap, v6 ones into v6; the tree logic is
the same."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.ondisk import BlobEntry
from accel.formats.nydus.reader import read_bootstrap, to_tree
from accel.formats.nydus.reader_v5 import is_v5, read_bootstrap_v5, to_tree_v5
from accel.formats.nydus.tree import Node
from accel.formats.nydus.writer import WriteOptions, write_bootstrap
from accel.formats.nydus.writer_v5 import V5WriteOptions, write_bootstrap_v5

WHITEOUT_PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"


@dataclass(frozen=True)
class MetaBlob:
    """Where an OCI-ref (zran) layer's metadata lives: the Nydus blob holding its blob meta and ToC, while
    the blob id stays the original layer's digest (``--blob-digests``, ``--blob-sizes`` and
    ``--blob-toc-digests`` of ``nydus-image merge``)."""

    digest: bytes
    size: int
    toc_digest: bytes
    toc_size: int


@dataclasses.dataclass
class _Layer:
    """What the merge takes from one per-layer bootstrap, v5 or v6."""

    version: int
    tree: Node
    blobs: list[BlobEntry]
    chunk_size: int
    compressor: str
    digester: str
    explicit_uid_gid: bool


def _load(data: bytes) -> _Layer:
    if is_v5(data):
        v5 = read_bootstrap_v5(data)
        explicit = bool(v5.flags & c.SF_EXPLICIT_UID_GID)
        return _Layer(5, to_tree_v5(v5), v5.blobs, v5.chunk_size, v5.compressor, v5.digester, explicit)
    bs = read_bootstrap(data)
    explicit = bool(bs.ext.flags & c.SF_EXPLICIT_UID_GID)
    return _Layer(6, to_tree(bs), bs.blobs, bs.chunk_size, bs.compressor, bs.digester, explicit)


def merge(
    layers: Sequence[tuple[bytes, str]],
    *,
    prefetch_patterns: Sequence[str] = ("/",),
    meta_blobs: Sequence[MetaBlob | None] = (),
    chunk_dict_blobs: Collection[str] = (),
) -> bytes:
    """Merge ``(per-layer bootstrap, blob id)`` pairs, lowest layer first, into one bootstrap.

    The blob id (the layer digest hex) replaces the placeholder id of the layer's blob. Blobs named in
    ``chunk_dict_blobs`` (the chunk dictionary's, which the layers were built with) keep their ids and are
    listed once however many layers reference them. Only blobs that some file still references are kept,
    numbered in order of first reference. ``meta_blobs[i]``, where given, says where layer ``i``'s
    separate metadata lives.
    """
    if not layers:
        raise FormatError("nothing to merge")
    sources: list[BlobEntry] = []
    dict_index: dict[str, int] = {}
    merged: Node | None = None
    chunk_size = 0
    compressor = digester = ""
    explicit = False
    version = 0
    for depth, (data, blob_id) in enumerate(layers):
        try:
            bs = _load(data)
        except FormatError as exc:
            raise FormatError(f"layer {depth}: {exc.reason}", entry=exc.entry) from exc
        if version and bs.version != version:
            raise FormatError(f"layer {depth}: RAFS v{bs.version} cannot merge with v{version} layers")
        version = bs.version
        if bs.blobs:
            if chunk_size and bs.chunk_size != chunk_size:
                raise FormatError(
                    f"layer {depth}: chunk size {bs.chunk_size:#x} differs from {chunk_size:#x}"
                )
            chunk_size = bs.chunk_size
        if not compressor or (bs.blobs and not sources):
            compressor, digester = bs.compressor, bs.digester
            explicit = bs.explicit_uid_gid
        own = [blob for blob in bs.blobs if blob.blob_id not in chunk_dict_blobs]
        local: list[int] = []
        for blob in bs.blobs:
            entry = dataclasses.replace(blob, features=blob.features & ~c.BF_INLINED_FS_META)
            shared = blob.blob_id in chunk_dict_blobs
            if shared and blob.blob_id in dict_index:
                local.append(dict_index[blob.blob_id])
                continue
            if not shared and len(own) == 1:
                entry.blob_id = blob_id
                meta = meta_blobs[depth] if depth < len(meta_blobs) else None
                if meta is not None and entry.features & c.BF_SEPARATE:
                    entry.blob_meta_digest, entry.blob_meta_size = meta.digest, meta.size
                    entry.blob_toc_digest, entry.blob_toc_size = meta.toc_digest, meta.toc_size
            if len(entry.blob_id) != 64 or entry.blob_id == c.PLACEHOLDER_BLOB_ID:
                raise FormatError(f"layer {depth}: blob {entry.blob_id!r} has no usable id")
            if shared:
                dict_index[blob.blob_id] = len(sources)
            local.append(len(sources))
            sources.append(entry)
        tree = bs.tree
        seen: set[int] = set()
        for node in _walk_files(tree):
            if id(node) in seen:
                continue
            seen.add(id(node))
            node.chunks = [dataclasses.replace(ch, blob_index=local[ch.blob_index]) for ch in node.chunks]
        if merged is None:
            merged = tree
        else:
            _apply_root(merged, tree)
    assert merged is not None
    blobs = _renumber_blobs(merged, sources)
    prefetch = tuple(p.encode("utf-8", "surrogateescape") for p in prefetch_patterns)
    if version == 5:
        v5 = V5WriteOptions(
            chunk_size=chunk_size or c.DEFAULT_CHUNK_SIZE,
            compressor=compressor,
            digester=digester,
            explicit_uid_gid=explicit,
            prefetch=prefetch,
        )
        return write_bootstrap_v5(merged, blobs, v5)
    opts = WriteOptions(
        chunk_size=chunk_size or c.DEFAULT_CHUNK_SIZE,
        compressor=compressor,
        digester=digester,
        explicit_uid_gid=explicit,
        force_has_xattr=True,
        prefetch=prefetch,
    )
    return write_bootstrap(merged, blobs, opts)


def _copy_meta(dst: Node, src: Node) -> None:
    dst.mode, dst.uid, dst.gid = src.mode, src.uid, src.gid
    dst.mtime, dst.mtime_nsec = src.mtime, src.mtime_nsec
    # v5 stores i_rdev for directories too (u32::MAX from the tar builder); v6 ignores it there.
    dst.rdev = src.rdev
    dst.xattrs = list(src.xattrs)


def _apply_root(lower: Node, upper: Node) -> None:
    _copy_meta(lower, upper)
    _apply_dir(lower, upper)


def _apply_dir(lower: Node, upper: Node) -> None:
    """``merge_children``: whiteouts first, then upper entries replace or join the lower ones."""
    for name in upper.children:
        if name == OPAQUE:
            lower.children.clear()
        elif name.startswith(WHITEOUT_PREFIX):
            lower.children.pop(name[len(WHITEOUT_PREFIX) :], None)
    for name in sorted(upper.children):
        if name.startswith(WHITEOUT_PREFIX):
            continue
        node = upper.children[name]
        if not node.is_dir:
            lower.children[name] = node
            continue
        old = lower.children.get(name)
        if old is not None and old.is_dir:
            target = old
        else:
            target = Node(mode=node.mode)
            lower.children[name] = target
        _copy_meta(target, node)
        _apply_dir(target, node)


def _walk_files(root: Node) -> list[Node]:
    """Regular files in the order the v6 layout walks the tree (per directory: files, then subdirectories)."""
    out: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        subdirs = []
        for name in sorted(node.children):
            child = node.children[name]
            if child.is_dir:
                subdirs.append(child)
            elif child.is_reg:
                out.append(child)
        stack.extend(reversed(subdirs))
    return out


def _renumber_blobs(root: Node, sources: list[BlobEntry]) -> list[BlobEntry]:
    order: dict[int, int] = {}
    seen: set[int] = set()
    for node in _walk_files(root):
        if id(node) in seen:
            continue
        seen.add(id(node))
        for ch in node.chunks:
            if ch.blob_index not in order:
                order[ch.blob_index] = len(order)
    blobs = []
    for src_index, new_index in sorted(order.items(), key=lambda kv: kv[1]):
        blobs.append(dataclasses.replace(sources[src_index], blob_index=new_index))
    seen.clear()
    for node in _walk_files(root):
        if id(node) in seen:
            continue
        seen.add(id(node))
        for ch in node.chunks:
            ch.blob_index = order[ch.blob_index]
    return blobs
