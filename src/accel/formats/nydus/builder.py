"""Per-layer builder: an uncompressed tar layer stream -> one nydus blob with an inlined bootstrap.

The output is what ``nydus-image create --type tar-rafs --blob-inline-meta --features blob-toc`` writes:
compressed chunks, ``image.blob`` header, blob meta (ci array + 4 KiB header), ``blob.digest``, the zstd
``image.boot`` and the ``rafs.blob.toc``, each followed by its 512-byte tar header. Chunks are compressed on
a thread pool and written in order, so memory stays at a few chunks whatever the layer size.

With ``fs_version=5`` it is what nydus-snapshotter asks for RAFS v5 (the same command without
``--features blob-toc``): the chunks, ``image.blob``, then the uncompressed v5 bootstrap as ``image.boot``;
v5 has no blob meta and no ToC.
"""

from __future__ import annotations

import dataclasses
import hashlib
import stat
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.batch import BATCH_FEATURES, BatchPacker, check_batch_size
from accel.formats.nydus.chunkcodec import compress, digest_of
from accel.formats.nydus.chunkdict import ChunkDict
from accel.formats.nydus.ondisk import BlobEntry, BlobMetaHeader, CiV1, TocEntry, tar_header
from accel.formats.nydus.tree import Chunk, Node, new_dir
from accel.formats.nydus.writer import WriteOptions, makedev, write_bootstrap
from accel.formats.nydus.writer_v5 import NO_RDEV, V5WriteOptions, write_bootstrap_v5
from accel.formats.streams import ByteSink, ByteSource
from accel.formats.tar import TarEntry, TarReader, check_safe, clean_path, encode_name

_SKIPPED = frozenset({"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"})
_TYPE_BITS = {
    b"0": stat.S_IFREG,
    b"1": stat.S_IFREG,
    b"2": stat.S_IFLNK,
    b"3": stat.S_IFCHR,
    b"4": stat.S_IFBLK,
    b"5": stat.S_IFDIR,
    b"6": stat.S_IFIFO,
}
_TOC_FLAG = {"none": c.TOC_NONE, "zstd": c.TOC_ZSTD, "lz4_block": c.TOC_LZ4_BLOCK}
_MAX_SYMLINK = 0xFFFF
_MAX_FILE_SIZE = 1 << 50


@dataclass(frozen=True)
class Options:
    """Build options (the converter's defaults: zstd, 1 MiB chunks, blake3, RAFS v6, prefetch ``/``).

    ``align_chunk`` is ``nydus-image --aligned-chunk``: each chunk's uncompressed offset on a 4 KiB boundary.
    It only changes RAFS v5, where chunks are packed by default; v6 addresses chunks by 4 KiB block, so
    nydus-image always aligns them there.
    """

    compressor: str = "zstd"
    chunk_size: int = c.DEFAULT_CHUNK_SIZE
    digester: str = "blake3"
    fs_version: int = 6
    prefetch_patterns: tuple[str, ...] = ("/",)
    threads: int = 2
    align_chunk: bool = False

    @property
    def aligned(self) -> bool:
        return self.align_chunk or self.fs_version == 6

    batch_size: int = 0  # 0: off; else small chunks are packed into batch chunks of up to this size

    def check(self) -> None:
        if self.fs_version not in (5, 6):
            raise FormatError(f"unsupported RAFS version {self.fs_version} (5 and 6 are built)")
        if self.compressor not in ("zstd", "lz4_block", "none"):
            raise FormatError(f"unsupported compressor {self.compressor!r}")
        if self.digester not in ("blake3", "sha256"):
            raise FormatError(f"unsupported digester {self.digester!r}")
        cs = self.chunk_size
        if cs & (cs - 1) or not c.MIN_CHUNK_SIZE <= cs <= c.MAX_CHUNK_SIZE:
            raise FormatError(f"chunk size {cs:#x} is not a power of two in [4 KiB, 16 MiB]")
        check_batch_size(self.batch_size, cs, self.fs_version)
        for p in self.prefetch_patterns:
            if not p.startswith("/"):
                raise FormatError(f"prefetch pattern {p!r} is not absolute")


@dataclass
class LayerBuild:
    """What a driver needs from one converted layer."""

    blob_digest: str  # sha256 of the whole output stream = the OCI layer digest
    blob_size: int
    blob_id: str  # the id the merged bootstrap will use (the layer digest hex unless given)
    bootstrap: bytes  # the per-layer bootstrap (uncompressed), as inlined in the blob
    blob_meta: bytes  # ``image/<hex>.blob.meta``: ci array padded to 4 KiB + header; b"" without data
    blob_entry: BlobEntry | None  # the blob-table entry of the per-layer bootstrap (None without data)
    chunk_count: int = 0
    uncompressed_size: int = 0
    files: int = 0
    toc: list[TocEntry] = field(default_factory=list)
    # OCI-ref layers: (sha256, size) of this blob's ToC section, which the merged bootstrap records for
    # the blob whose metadata lives here; None for a data blob.
    meta_blob_toc: tuple[bytes, int] | None = None
    dict_chunks: int = 0
    """Distinct chunks referenced from the chunk dictionary instead of written."""
    dict_bytes: int = 0
    """Their uncompressed size."""
    dict_blob_ids: tuple[str, ...] = ()
    """The dictionary blobs the layer's bootstrap references, in its blob-table order."""


class Out:
    """The output stream plus its running sha256 and position."""

    def __init__(self, dst: ByteSink) -> None:
        self.dst = dst
        self.hash = hashlib.sha256()
        self.pos = 0

    def write(self, data: bytes | bytearray) -> None:
        self.dst.write(data)
        self.hash.update(data)
        self.pos += len(data)


_Result = tuple[bytes, bytes | bytearray, bool, int]
_Job = tuple[list[tuple[Node, int]], "Future[list[_Result]]"]
# Chunks at least this big are read straight into their own buffer (no copy through the tar reader's).
_DIRECT_READ = 256 << 10
# A job holds chunks until it has this many bytes or entries: one thread handoff per ~1 MiB, not per file.
_BATCH_BYTES = 1 << 20
_BATCH_COUNT = 256


class _Chunker:
    """Digests and compresses chunks in parallel batches and commits them in order, with in-layer dedup.

    The digest and the compression both run in the worker (blake3, sha256 and zstd release the GIL), so
    the main thread only parses tar headers, reads content and writes results.
    """

    def __init__(self, out: Out, opts: Options, chunk_dict: ChunkDict | None = None) -> None:
        self.out = out
        self.opts = opts
        self.chunk_dict = chunk_dict
        # Dictionary blob index -> index in this layer's blob table (1, 2, ... in order of first reference,
        # after the layer's own blob, as upstream's BlobManager allocates them).
        self.dict_blobs: dict[int, int] = {}
        self.dict_refs: list[Chunk] = []
        self.dict_bytes = 0
        self.pool = ThreadPoolExecutor(max_workers=max(1, opts.threads), thread_name_prefix="nydus-chunk")
        self.pending: deque[_Job] = deque()
        self.limit = 2 * max(1, opts.threads) + 2
        self.batch: list[tuple[Node, int]] = []
        self.batch_data: list[bytes | bytearray] = []
        self.batch_raw: list[bool] = []
        self.batch_bytes = 0
        self.by_digest: dict[bytes, Chunk] = {}
        self.chunks: list[Chunk] = []
        self.c_off = 0
        self.u_off = 0
        self.packer = BatchPacker(opts.batch_size, opts.compressor) if opts.batch_size else None

    def _work(self, datas: list[bytes | bytearray], raws: list[bool]) -> list[_Result]:
        digester, compressor = self.opts.digester, self.opts.compressor
        out = []
        for data, raw in zip(datas, raws, strict=True):
            # A chunk bound for a batch is compressed with its batch, not alone.
            stored, compressed = (data, False) if raw else compress(compressor, data)
            out.append((digest_of(digester, data), stored, compressed, len(data)))
        return out

    def _batched(self, node: Node, size: int) -> bool:
        return self.packer is not None and self.packer.takes(len(node.chunks), size)

    def submit(self, node: Node, index: int, data: bytes | bytearray, offset: int) -> None:
        self.batch.append((node, index))
        self.batch_data.append(data)
        self.batch_raw.append(self._batched(node, len(data)))
        self.batch_bytes += len(data)
        if self.batch_bytes >= _BATCH_BYTES or len(self.batch) >= _BATCH_COUNT:
            self._send()

    def _send(self) -> None:
        if not self.batch:
            return
        while len(self.pending) >= self.limit:
            self._commit(*self.pending.popleft())
        self.pending.append((self.batch, self.pool.submit(self._work, self.batch_data, self.batch_raw)))
        self.batch, self.batch_data, self.batch_raw, self.batch_bytes = [], [], [], 0

    def _commit(self, targets: list[tuple[Node, int]], fut: Future[list[_Result]]) -> None:
        for (node, index), (digest, stored, compressed, size) in zip(targets, fut.result(), strict=True):
            chunk = self.by_digest.get(digest)
            if chunk is None or chunk.uncompressed_size != size:
                chunk = self._from_dict(digest, size)
            if chunk is None:
                if len(self.chunks) >= c.MAX_CHUNK_COUNT:
                    raise FormatError("too many chunks in one layer")
                batched = self._batched(node, size)
                if not batched or (self.packer is not None and self.packer.full_for(size)):
                    self._close_unit()
                chunk = Chunk(
                    digest=digest,
                    blob_index=0,
                    ci_index=len(self.chunks),
                    compressed_offset=0 if batched else self.c_off,
                    compressed_size=0 if batched else len(stored),
                    uncompressed_offset=self.u_off,
                    uncompressed_size=size,
                    compressed=compressed and not batched,
                )
                if self.packer is not None and batched:
                    self.packer.add(chunk.ci_index, self.c_off, chunk, stored)
                else:
                    self.out.write(stored)
                    self.c_off += len(stored)
                self.u_off += -(-size // c.BLOCK_SIZE) * c.BLOCK_SIZE if self.opts.aligned else size
                self.chunks.append(chunk)
                self.by_digest[digest] = chunk
            node.chunks[index] = chunk

    def _from_dict(self, digest: bytes, size: int) -> Chunk | None:
        found = self.chunk_dict.lookup(digest, size) if self.chunk_dict is not None else None
        if found is None:
            return None
        local = self.dict_blobs.setdefault(found.blob_index, len(self.dict_blobs) + 1)
        chunk = dataclasses.replace(found, blob_index=local)
        self.by_digest[digest] = chunk
        self.dict_refs.append(chunk)
        self.dict_bytes += size
        return chunk

    def _close_unit(self) -> None:
        unit = self.packer.close_unit() if self.packer is not None else None
        if unit is not None:
            self.out.write(unit)
            self.c_off += len(unit)

    def flush(self) -> None:
        self._send()
        while self.pending:
            self._commit(*self.pending.popleft())
        self._close_unit()

    def close(self) -> None:
        for _, fut in self.pending:
            fut.cancel()
        self.pool.shutdown(wait=True)


def build_layer(
    src: BinaryIO,
    dst: ByteSink,
    options: Options | None = None,
    *,
    blob_id: str | None = None,
    chunk_dict: ChunkDict | None = None,
) -> LayerBuild:
    """Convert the uncompressed tar ``src`` into a nydus blob written to ``dst``.

    ``blob_id`` is the id recorded for the merged bootstrap; by default it is the sha256 of the output.
    The inlined bootstrap itself carries the ``"x" * 64`` placeholder id, as nydus-image does.
    With ``chunk_dict``, chunks the dictionary holds are not written: the bootstrap points at them in the
    dictionary's blobs, which join its blob table after the layer's own blob.
    """
    opts = options or Options()
    opts.check()
    if chunk_dict is not None:
        check_chunk_dict(chunk_dict, opts)
    out = Out(dst)
    chunker = _Chunker(out, opts, chunk_dict)
    try:
        root, files = read_tar(src, chunker, opts)
        chunker.flush()
    finally:
        chunker.close()
    return _finish(out, chunker, root, files, opts, blob_id)


def check_chunk_dict(chunk_dict: ChunkDict, opts: Options) -> None:
    """A dictionary can serve a build only with the same chunk size (one image has one) and digester (the
    digests would never match)."""
    if chunk_dict.chunk_size != opts.chunk_size:
        raise FormatError(
            f"the chunk dictionary has {chunk_dict.chunk_size:#x} chunks, the build {opts.chunk_size:#x}"
        )
    if chunk_dict.digester != opts.digester:
        raise FormatError(
            f"the chunk dictionary digests chunks with {chunk_dict.digester}, the build {opts.digester}"
        )


class ChunkSink(Protocol):
    """Where the tar walk hands each file chunk: its bytes and their offset in the uncompressed tar."""

    def submit(self, node: Node, index: int, data: bytes | bytearray, offset: int) -> None: ...


def read_tar(src: ByteSource, chunker: ChunkSink, opts: Options) -> tuple[Node, int]:
    """The file tree of a tar layer (and the count of regular files), each file's chunks handed to
    ``chunker``, which fills ``node.chunks[index]``."""
    root = new_dir()
    seen_files: dict[str, Node] = {}
    files = 0
    reader = TarReader(src)
    for entry in reader:
        name = entry.name
        path = _entry_path(entry)
        if path in _SKIPPED:
            continue
        node = _make_node(entry, name)
        if entry.is_hardlink:
            target = _link_path(entry)
            linked = seen_files.get(target)
            if linked is None or not linked.is_reg:
                raise FormatError(
                    f"hardlink target {entry.linkname!r} is not a known regular file", entry=name
                )
            node = linked
        elif node.is_reg:
            if not 0 <= entry.size <= _MAX_FILE_SIZE:
                raise FormatError(f"absurd file size {entry.size}", entry=name)
            nchunks = -(-entry.size // opts.chunk_size)
            if nchunks > c.MAX_CHUNK_COUNT:
                raise FormatError(f"file has too many chunks ({nchunks})", entry=name)
            node.size = entry.size
            placeholder = Chunk(b"", 0, 0, 0, 0, 0, 0, False)
            node.chunks = [placeholder] * nchunks
            try:
                for i in range(nchunks):
                    offset = reader.offset
                    want = min(opts.chunk_size, entry.size - i * opts.chunk_size)
                    chunker.submit(node, i, _read_chunk(reader, want), offset)
            except FormatError as exc:
                # A broken compressed stream surfaces here without knowing which entry it cut short.
                raise (exc if exc.entry is not None else FormatError(exc.reason, entry=name)) from exc
        if path == "":
            if not node.is_dir:
                raise FormatError("the root entry is not a directory", entry=name)
            node.children = root.children
            root = node
            continue
        parent = _parent_dir(root, path, name)
        base = encode_name(path.rsplit("/", 1)[-1])
        old = parent.children.get(base)
        if old is not None and old.is_dir and node.is_dir:
            # The later entry's metadata wins; the directory keeps what was already put under it.
            node.children = old.children
        parent.children[base] = node
        if node.is_reg:
            seen_files[path] = node
            files += 1
        else:
            seen_files.pop(path, None)
    return root, files


def _read_chunk(reader: TarReader, want: int) -> bytes | bytearray:
    if want >= _DIRECT_READ:
        buf = bytearray(want)
        if reader.readinto(buf) == want:
            return buf
    else:
        data = reader.read(want)
        if len(data) == want:
            return data
    raise FormatError("truncated file content")


def _entry_path(entry: TarEntry) -> str:
    name = entry.name
    if entry.type == b"g":
        raise FormatError("PAX global headers are not supported", entry=name)
    check_safe(name)
    if ".." in name.split("/"):
        raise FormatError("path contains a '..' component", entry=name)
    return clean_path(name)


def _link_path(entry: TarEntry) -> str:
    try:
        check_safe(entry.linkname)
    except FormatError as exc:
        raise FormatError(f"hardlink target {entry.linkname!r}: {exc.reason}", entry=entry.name) from None
    if ".." in entry.linkname.split("/"):
        raise FormatError(f"hardlink target {entry.linkname!r} contains '..'", entry=entry.name)
    return clean_path(entry.linkname)


def _make_node(entry: TarEntry, name: str) -> Node:
    bits = _TYPE_BITS.get(entry.type)
    if bits is None:
        raise FormatError(f"unsupported tar entry type {entry.type!r}", entry=name)
    if entry.sparse is not None:
        raise FormatError("sparse files are not supported", entry=name)
    # nydus takes uid, gid and mtime from the ustar header itself; PAX records for them are ignored.
    block = entry.raw_header[-512:]
    uid, gid, mtime = entry.uid, entry.gid, entry.mtime
    if {"uid", "gid", "mtime"} & entry.pax_records.keys():
        uid, gid, mtime = (_header_int(block[a:b], name) for a, b in ((108, 116), (116, 124), (136, 148)))
    if not 0 <= mtime < 1 << 64:
        raise FormatError(f"mtime {mtime} out of range", entry=name)
    if not 0 <= uid < 1 << 32 or not 0 <= gid < 1 << 32:
        raise FormatError("uid/gid out of range", entry=name)
    node = Node(mode=(entry.mode & 0o7777) | bits, uid=uid, gid=gid, mtime=mtime)
    xattrs: list[tuple[bytes, bytes]] = []
    for key, value in entry.pax_records.items():
        if key.startswith("SCHILY.xattr."):
            xname = encode_name(key[len("SCHILY.xattr.") :])
            if not any(xname.startswith(p) for p, _ in c.XATTR_PREFIXES):
                raise FormatError(f"unsupported xattr {xname!r}", entry=name)
            raw = encode_name(value)
            if len(xname) > 255 or len(raw) > 0xFFFF:
                raise FormatError(f"xattr {xname!r} too large", entry=name)
            xattrs.append((xname, raw))
    node.xattrs = xattrs
    if entry.is_symlink:
        target = encode_name(entry.linkname)
        if not target or len(target) > _MAX_SYMLINK:
            raise FormatError(f"symlink target length {len(target)} out of range", entry=name)
        node.symlink = target
    elif entry.is_chardev or entry.is_blockdev:
        node.rdev = makedev(entry.devmajor, entry.devminor)
    return node


def _header_int(field: bytes, name: str) -> int:
    """A numeric ustar field: octal text, or GNU base-256 when the top bit of the first byte is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise FormatError(f"bad numeric header field {field!r}", entry=name) from None


def _parent_dir(root: Node, path: str, name: str) -> Node:
    node = root
    for part in path.split("/")[:-1]:
        key = encode_name(part)
        child = node.children.get(key)
        if child is None:
            child = new_dir()
            node.children[key] = child
        elif not child.is_dir:
            raise FormatError(f"parent {part!r} is not a directory", entry=name)
        node = child
    return node


def _finish(
    out: Out, chunker: _Chunker, root: Node, files: int, opts: Options, blob_id: str | None
) -> LayerBuild:
    if opts.fs_version == 5:
        return _finish_v5(out, chunker, root, files, opts, blob_id)
    chunks = chunker.chunks
    toc: list[TocEntry] = []
    blobs: list[BlobEntry] = []
    blob_meta = b""
    entry: BlobEntry | None = None
    if chunks:
        out.write(tar_header(c.ENTRY_BLOB, out.pos))
        # The chunk data starts the stream, so the running stream hash is sha256(chunks || header).
        data_digest = out.hash.copy().digest()
        uncompressed_size = chunker.u_off
        toc.append(
            TocEntry(
                flags=c.TOC_NONE,
                name=c.ENTRY_BLOB,
                uncompressed_digest=data_digest,
                compressed_offset=0,
                compressed_size=chunker.c_off,
                uncompressed_size=uncompressed_size,
            )
        )
        features = (
            c.BF_ALIGNED
            | c.BF_INLINED_FS_META
            | c.BF_INLINED_CHUNK_DIGEST
            | c.BF_HAS_TAR_HEADER
            | c.BF_HAS_TOC
            | c.BF_CAP_TAR_TOC
        )
        zran = (0, 0, 0)
        if chunker.packer is None:
            ci_raw = b"".join(
                CiV1(
                    ch.uncompressed_offset, ch.uncompressed_size, ch.compressed_offset, ch.compressed_size
                ).encode()
                for ch in chunks
            )
        else:
            features |= BATCH_FEATURES
            ci_raw, table_offset = chunker.packer.blob_meta(chunks)
            zran = (table_offset, len(ci_raw) - table_offset, len(chunker.packer.contexts))
        meta = write_blob_meta(out, ci_raw, opts.compressor, features, len(chunks), zran=zran)
        toc.extend(meta.toc)
        toc.append(write_digests(out, chunks))
        entry = meta.blob_entry(
            blob_id=c.PLACEHOLDER_BLOB_ID,
            chunk_size=opts.chunk_size,
            compressor=opts.compressor,
            digester=opts.digester,
            compressed_size=out.pos,
            uncompressed_size=uncompressed_size,
        )
        blobs.append(entry)
        blob_meta = meta.cache_file
    dict_blob_ids = _dict_blobs(chunker, blobs)
    wopts = WriteOptions(
        chunk_size=opts.chunk_size,
        compressor=opts.compressor,
        digester=opts.digester,
        prefetch=tuple(encode_name(p) for p in opts.prefetch_patterns),
    )
    bootstrap = write_bootstrap(root, blobs, wopts)
    write_bootstrap_and_toc(out, bootstrap, toc)
    digest_hex = out.hash.hexdigest()
    return LayerBuild(
        blob_digest="sha256:" + digest_hex,
        blob_size=out.pos,
        blob_id=blob_id or digest_hex,
        bootstrap=bootstrap,
        blob_meta=blob_meta,
        blob_entry=entry,
        chunk_count=len(chunks),
        uncompressed_size=chunker.u_off,
        files=files,
        toc=toc,
        dict_chunks=len(chunker.dict_refs),
        dict_bytes=chunker.dict_bytes,
        dict_blob_ids=dict_blob_ids,
    )


@dataclass(frozen=True)
class BlobMeta:
    """The blob meta section as written: the ci data (uncompressed) and its 4 KiB header."""

    ci_raw: bytes
    header: BlobMetaHeader
    toc: list[TocEntry]

    @property
    def cache_file(self) -> bytes:
        """``image/<hex>.blob.meta``: the uncompressed ci data padded to 4 KiB, then the header."""
        return self.ci_raw + bytes(-len(self.ci_raw) % c.BLOCK_SIZE) + self.header.encode()

    def blob_entry(
        self,
        *,
        blob_id: str,
        chunk_size: int,
        compressor: str,
        digester: str,
        compressed_size: int,
        uncompressed_size: int,
    ) -> BlobEntry:
        h = self.header
        return BlobEntry(
            blob_id=blob_id,
            blob_index=0,
            chunk_size=chunk_size,
            chunk_count=h.ci_entries,
            compression_algo=c.COMPRESSOR_IDS[compressor],
            digest_algo=c.DIGESTER_IDS[digester],
            features=h.features,
            compressed_size=compressed_size,
            uncompressed_size=uncompressed_size,
            ci_compressor=h.ci_compressor,
            ci_offset=h.ci_offset,
            ci_compressed_size=h.ci_compressed_size,
            ci_uncompressed_size=h.ci_uncompressed_size,
        )


def write_blob_meta(
    out: Out,
    ci_raw: bytes,
    compressor: str,
    features: int,
    entries: int,
    *,
    zran: tuple[int, int, int] = (0, 0, 0),
) -> BlobMeta:
    """The ``blob.meta`` section: the ci data (compressed when that shrinks it) directly followed by its
    header, then the tar header; ``zran`` is the (offset, size, count) of a context table in the ci data."""
    ci_stored, ci_compressed = compress(compressor, ci_raw)
    ci_compressor = compressor if ci_compressed else "none"
    ci_offset = out.pos
    header = BlobMetaHeader(
        features=features,
        ci_compressor=c.COMPRESSOR_IDS[ci_compressor],
        ci_entries=entries,
        ci_offset=ci_offset,
        ci_compressed_size=len(ci_stored),
        ci_uncompressed_size=len(ci_raw),
        zran_offset=zran[0],
        zran_size=zran[1],
        zran_count=zran[2],
    )
    header_bytes = header.encode()
    out.write(ci_stored)
    out.write(header_bytes)
    out.write(tar_header(c.ENTRY_META, len(ci_stored) + len(header_bytes)))
    toc = [
        TocEntry(
            flags=_TOC_FLAG[ci_compressor],
            name=c.ENTRY_META,
            uncompressed_digest=hashlib.sha256(ci_raw).digest(),
            compressed_offset=ci_offset,
            compressed_size=len(ci_stored),
            uncompressed_size=len(ci_raw),
        ),
        TocEntry(
            flags=c.TOC_NONE,
            name=c.ENTRY_META_HEADER,
            uncompressed_digest=hashlib.sha256(header_bytes).digest(),
            compressed_offset=ci_offset + len(ci_stored),
            compressed_size=len(header_bytes),
            uncompressed_size=len(header_bytes),
        ),
    ]
    return BlobMeta(ci_raw, header, toc)


def write_digests(out: Out, chunks: list[Chunk]) -> TocEntry:
    """The ``blob.digest`` section: the chunk digests in ci order, never compressed."""
    digests = b"".join(ch.digest for ch in chunks)
    digest_offset = out.pos
    out.write(digests)
    out.write(tar_header(c.ENTRY_DIGEST, len(digests)))
    return TocEntry(
        flags=c.TOC_NONE,
        name=c.ENTRY_DIGEST,
        uncompressed_digest=hashlib.sha256(digests).digest(),
        compressed_offset=digest_offset,
        compressed_size=len(digests),
        uncompressed_size=len(digests),
    )


def write_bootstrap_and_toc(out: Out, bootstrap: bytes, toc: list[TocEntry]) -> bytes:
    """The ``image.boot`` section (zstd unless that does not shrink it), then the ToC that ends the blob;
    returns the ToC section as written (entries and tar header): its digest names the ToC in a merge."""
    boot_stored, boot_compressed = compress("zstd", bootstrap)
    boot_offset = out.pos
    out.write(boot_stored)
    out.write(tar_header(c.ENTRY_BOOTSTRAP, len(boot_stored)))
    toc.append(
        TocEntry(
            flags=c.TOC_ZSTD if boot_compressed else c.TOC_NONE,
            name=c.ENTRY_BOOTSTRAP,
            uncompressed_digest=hashlib.sha256(bootstrap).digest(),
            compressed_offset=boot_offset,
            compressed_size=len(boot_stored),
            uncompressed_size=len(bootstrap),
        )
    )
    toc_bytes = b"".join(e.encode() for e in toc)
    section = toc_bytes + tar_header(c.TOC_NAME, len(toc_bytes))
    out.write(section)
    return section


def _finish_v5(
    out: Out, chunker: _Chunker, root: Node, files: int, opts: Options, blob_id: str | None
) -> LayerBuild:
    blobs: list[BlobEntry] = []
    entry: BlobEntry | None = None
    if chunker.chunks:
        out.write(tar_header(c.ENTRY_BLOB, out.pos))
        # No ALIGNED bit even with aligned chunks: nydus sets it only when it writes a v6 blob meta.
        entry = BlobEntry(
            blob_id=c.PLACEHOLDER_BLOB_ID,
            blob_index=0,
            chunk_size=opts.chunk_size,
            chunk_count=len(chunker.chunks),
            compression_algo=c.COMPRESSOR_IDS[opts.compressor],
            digest_algo=c.DIGESTER_IDS[opts.digester],
            features=c.BF_INLINED_FS_META | c.BF_HAS_TAR_HEADER | c.BF_CAP_TAR_TOC,
            compressed_size=out.pos,
            uncompressed_size=chunker.u_off,
        )
        blobs.append(entry)
    _mark_no_rdev(root)
    bootstrap = write_bootstrap_v5(
        root,
        blobs,
        V5WriteOptions(
            chunk_size=opts.chunk_size,
            compressor=opts.compressor,
            digester=opts.digester,
            prefetch=tuple(encode_name(p) for p in opts.prefetch_patterns),
        ),
    )
    # Without the blob-toc feature nydus-image inlines the bootstrap uncompressed.
    out.write(bootstrap)
    out.write(tar_header(c.ENTRY_BOOTSTRAP, len(bootstrap)))
    digest_hex = out.hash.hexdigest()
    return LayerBuild(
        blob_digest="sha256:" + digest_hex,
        blob_size=out.pos,
        blob_id=blob_id or digest_hex,
        bootstrap=bootstrap,
        blob_meta=b"",
        blob_entry=entry,
        chunk_count=len(chunker.chunks),
        uncompressed_size=chunker.u_off,
        files=files,
    )


def _mark_no_rdev(root: Node) -> None:
    """nydus's tar builder stores ``i_rdev`` only for devices and fifos, ``u32::MAX`` for the rest."""
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if not (stat.S_ISCHR(node.mode) or stat.S_ISBLK(node.mode) or stat.S_ISFIFO(node.mode)):
            node.rdev = NO_RDEV
        stack.extend(node.children.values())


def _dict_blobs(chunker: _Chunker, blobs: list[BlobEntry]) -> tuple[str, ...]:
    """Append the referenced dictionary blobs to ``blobs``; without a blob of its own the layer's table
    starts with them."""
    if chunker.chunk_dict is None or not chunker.dict_blobs:
        return ()
    if not blobs:
        for chunk in chunker.dict_refs:
            chunk.blob_index -= 1
    ids = []
    for dict_index, _ in sorted(chunker.dict_blobs.items(), key=lambda kv: kv[1]):
        source = chunker.chunk_dict.blobs[dict_index]
        blobs.append(dataclasses.replace(source, blob_index=len(blobs)))
        ids.append(source.blob_id)
    return tuple(ids)
