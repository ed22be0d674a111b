"""OCI-ref ("zran") layers: a Nydus blob that holds metadata only, its chunks pointing into the original gzip
layer (what ``nydus-image create --type targz-ref --blob-inline-meta --features blob-toc`` writes).

No chunk data is written. Each file chunk is a ci v2 entry flagged ZRAN that names a *zran context*, a
place where inflating can restart in the gzip layer (a deflate block boundary: compressed and uncompressed
offsets, the unused bits of the byte before it, the window before it), and its offset in that context's
output. nydusd fetches the context's compressed range from the original layer, inflates it and slices the
chunk out (``storage/src/cache/mod.rs`` ``decompress_zran``). The blob meta is the ci array followed by the
context table and the dictionaries; the blob id is the original layer's digest, the compressor gzip and
the chunk digester sha256, as upstream forces for ref conversions.

Contexts are checkpoints the inflater takes as it goes: the first block boundary after every two chunks
of output or one chunk of input, whichever comes first (and at each gzip member's start), so it stops at a
boundary a few thousand times a layer, not at each of its hundred thousand blocks. A chunk's context is
the last checkpoint before it. Upstream's generator (``ZranGenerator::begin_read``) opens one after about
one chunk of output or half a chunk of input; every context costs a 32 KiB window in the blob meta, which
nydusd loads before the first read, so we take twice that: half the metadata, at most twice the inflating
per cold read. A context's output ends with its last chunk (one byte later where that is the end of a gzip
member, which nydusd's decoder cannot stop at), and its compressed range where the inflater had read to
when it made that output.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass

from accel.errors import FormatError
from accel.formats.nydus import constants as c
from accel.formats.nydus.builder import (
    LayerBuild,
    Options,
    Out,
    read_tar,
    write_blob_meta,
    write_bootstrap_and_toc,
    write_digests,
)
from accel.formats.nydus.ondisk import BlobEntry, CiV2, TocEntry, ZranContext
from accel.formats.nydus.tree import Chunk, Node
from accel.formats.nydus.writer import WriteOptions, write_bootstrap
from accel.formats.streams import ByteSink, ByteSource
from accel.formats.tar import encode_name
from accel.formats.zran import WINDOW_SIZE, BlockInflater

COMPRESSOR = "gzip"
DIGESTER = "sha256"
META_COMPRESSOR = "zstd"
# nydusd refuses a context whose output exceeds its largest chunk (RAFS_MAX_CHUNK_SIZE).
MAX_CONTEXT_OUTPUT = c.MAX_CHUNK_SIZE
# The inflating thread runs at most a few queued batches (about 12 MiB) ahead of the tar walk, so windows
# of the boundaries the walk asks about are still in a ring this big.
_RING = 32 << 20
# Chunks of output between checkpoints (see the module's docstring).
CHECKPOINT_SPACING = 2
FEATURES = (
    c.BF_ALIGNED
    | c.BF_INLINED_FS_META
    | c.BF_CHUNK_INFO_V2
    | c.BF_ZRAN
    | c.BF_SEPARATE
    | c.BF_INLINED_CHUNK_DIGEST
    | c.BF_HAS_TAR_HEADER
    | c.BF_HAS_TOC
    | c.BF_CAP_TAR_TOC
)


@dataclass(frozen=True)
class _Boundary:
    index: int
    in_offset: int
    out_offset: int
    bits: int
    byte: int
    window: bytes


class _Source:
    """The gzip layer as read: its sha256 is the blob id. The inflating thread only queues what it read;
    the reader's thread, which waits on the inflater most of the time, hashes it (:meth:`hash_pending`)."""

    def __init__(self, src: ByteSource) -> None:
        self._src = src
        self._pending: deque[bytes] = deque()
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        self._pending.append(data)
        self.size += len(data)
        return data

    def hash_pending(self) -> None:
        pending = self._pending
        while pending:
            self._hash.update(pending.popleft())

    def hexdigest(self) -> str:
        self.hash_pending()
        return self._hash.hexdigest()


class _Inflater(BlockInflater):
    """Takes a checkpoint (offsets, bits, window) at the first block boundary every ``spacing`` bytes of
    output or half as much input, and notes after every call to inflate how far input and output had come
    (for the chunks' compressed ranges and the contexts' ends)."""

    def __init__(self, source: ByteSource, spacing: int) -> None:
        super().__init__(source, background=True, ring_size=_RING)
        self.spacing = spacing
        self._due_in = 0
        self.marks_in = array("Q")
        self.marks_out = array("Q")
        self.member_starts = array("Q", [0])
        self._points: list[_Boundary] = []
        self.points_out = array("Q")

    def stepped(self) -> None:
        self.marks_in.append(self.compressed_size)
        self.marks_out.append(self.uncompressed_size)
        if self.compressed_size >= self._due_in and self.boundaries_from > self.uncompressed_size:
            # Half the spacing of compressed input is due too (data that hardly compresses).
            self.boundaries_from = self.uncompressed_size
        if self.members > len(self.member_starts):
            # A new gzip member: its chunks need a checkpoint of their own, right after its header.
            self.member_starts.append(self.member_start)
            self.boundaries_from = self.member_start

    def at_boundary(self, bits: int) -> None:
        out = self.uncompressed_size
        # The dictionary is the member's own output only: what inflateGetDictionary gives upstream.
        have = min(WINDOW_SIZE, out - self.member_start)
        window = self.window()[WINDOW_SIZE - have :] if have else b""
        byte = self.previous_byte() if bits else 0
        index = len(self._points)
        self._points.append(_Boundary(index, self.compressed_size, out, bits, byte, window))
        self.points_out.append(out)  # last: a reader that sees this offset sees the whole checkpoint
        self.boundaries_from = out + self.spacing
        self._due_in = self.compressed_size + self.spacing // 2

    def checkpoint_before(self, offset: int) -> _Boundary | None:
        """The last checkpoint at or before uncompressed ``offset``: the reader has read past it, so the
        inflating thread has taken it."""
        i = bisect_right(self.points_out, offset) - 1
        return self._points[i] if i >= 0 else None


@dataclass
class _Context:
    start: _Boundary
    end_out: int


@dataclass
class _ZranChunk:
    chunk: Chunk
    context: int
    start: int  # uncompressed offset in the tar stream


class _ZranChunker:
    """Records each chunk's place in the gzip stream instead of writing it."""

    def __init__(self, inflater: _Inflater, source: _Source, opts: Options) -> None:
        self.inflater = inflater
        self.source = source
        self.chunk_size = opts.chunk_size
        self.contexts: list[_Context] = []
        self.chunks: list[_ZranChunk] = []
        self.by_digest: dict[bytes, Chunk] = {}
        self.u_off = 0

    def submit(self, node: Node, index: int, data: bytes | bytearray, offset: int) -> None:
        size = len(data)
        self.source.hash_pending()
        ctx = self._context_for(offset, size)  # also lets the inflater forget older boundaries
        digest = hashlib.sha256(data).digest()
        # Upstream deduplicates zran chunks too: a repeat refers to the first copy's context.
        known = self.by_digest.get(digest)
        if known is not None and known.uncompressed_size == size:
            node.chunks[index] = known
            return
        if len(self.chunks) >= c.MAX_CHUNK_COUNT:
            raise FormatError("too many chunks in one layer")
        chunk = Chunk(digest, 0, len(self.chunks), 0, 0, self.u_off, size, True)
        self.u_off += -(-size // c.BLOCK_SIZE) * c.BLOCK_SIZE
        self.chunks.append(_ZranChunk(chunk, len(self.contexts) - 1, offset))
        self.by_digest[digest] = chunk
        ctx.end_out = max(ctx.end_out, offset + size)
        node.chunks[index] = chunk

    def finish(self) -> None:
        """Drop the contexts no chunk ended up in (opened for a repeat), renumbering the rest."""
        used = sorted({zc.context for zc in self.chunks})
        renumber = {old: new for new, old in enumerate(used)}
        self.contexts = [self.contexts[old] for old in used]
        for zc in self.chunks:
            zc.context = renumber[zc.context]

    def _context_for(self, offset: int, size: int) -> _Context:
        point = self.inflater.checkpoint_before(offset)
        if point is None:
            raise FormatError(f"no deflate block boundary before file data at offset {offset}")
        cur = self.contexts[-1] if self.contexts else None
        if cur is None or point.index != cur.start.index:
            cur = _Context(point, offset)
            self.contexts.append(cur)
        if offset + size - cur.start.out_offset > MAX_CONTEXT_OUTPUT:
            raise FormatError(
                f"the gzip stream has no deflate block boundary in the {MAX_CONTEXT_OUTPUT >> 20} MiB "
                f"before offset {offset + size}: it cannot be indexed for random access"
            )
        return cur


def build_ref_layer(src: ByteSource, dst: ByteSink, options: Options | None = None) -> LayerBuild:
    """Index the gzip tar layer ``src`` and write its OCI-ref Nydus blob (metadata only) to ``dst``.

    ``LayerBuild.blob_id`` is the sha256 of ``src`` (the original layer's digest hex), which the chunks'
    blob refers to.
    """
    opts = options or Options()
    opts.check()
    source = _Source(src)
    head = source.read(3)
    if head[:2] != b"\x1f\x8b":
        raise FormatError("an OCI-ref (zran) layer must be gzip-compressed")
    inflater = _Inflater(_Prefixed(head, source), opts.chunk_size * CHECKPOINT_SPACING)
    try:
        chunker = _ZranChunker(inflater, source, opts)
        root, files = read_tar(inflater, chunker, opts)
        inflater.drain()
    finally:
        inflater.close()
    chunker.finish()
    return _write(dst, root, files, chunker, _context_table(chunker, inflater), source, opts)


class _Prefixed:
    """``data`` then the rest of ``src`` (the magic bytes were read to check the compression)."""

    def __init__(self, data: bytes, src: ByteSource) -> None:
        self._head = data
        self._src = src

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head + self._src.read(n - len(head) if n >= 0 else -1)
        return self._src.read(n)


@dataclass(frozen=True)
class _MetaData:
    """The uncompressed ci data of a zran blob: the ci v2 array, then the context table and dictionaries."""

    data: bytes
    ci_size: int
    contexts: int


def _context_table(chunker: _ZranChunker, inflater: _Inflater) -> _MetaData:
    """Every chunk's compressed range (the boundaries around it) and ci entry, each context's compressed and
    uncompressed span (to the first block boundary after its chunks), and the dictionaries, in one buffer."""
    b_in, b_out = inflater.marks_in, inflater.marks_out
    total_in, total_out = inflater.compressed_size, inflater.uncompressed_size
    data = bytearray()
    for zc in chunker.chunks:
        ch = zc.chunk
        first = bisect_right(b_out, zc.start) - 1
        last = bisect_left(b_out, zc.start + ch.uncompressed_size)
        ch.compressed_offset = b_in[first] if first >= 0 else 0
        ch.compressed_size = (b_in[last] if last < len(b_in) else total_in) - ch.compressed_offset
        offset = zc.start - chunker.contexts[zc.context].start.out_offset
        flags = c.CI2_COMPRESSED | c.CI2_ZRAN
        data += CiV2(
            ch.uncompressed_offset,
            ch.uncompressed_size,
            ch.compressed_offset,
            ch.compressed_size,
            flags,
            zc.context << 32 | offset,
        ).encode()
    ci_size = len(data)
    member_ends = {*inflater.member_starts[1:], total_out}
    dict_offset = 0
    for ctx in chunker.contexts:
        stop = ctx.end_out
        if stop in member_ends:
            # Inflating to the last byte of a member runs into its end, where nydusd's decoder wants more
            # output: go one byte into the next member instead.
            stop += 1
            if stop >= total_out or stop in member_ends:
                raise FormatError(f"file data ends a gzip member at offset {ctx.end_out}: cannot index it")
        i = bisect_left(b_out, stop)
        end_in = b_in[i] if i < len(b_in) else total_in
        start = ctx.start
        out_len = stop - start.out_offset
        if out_len > MAX_CONTEXT_OUTPUT:
            raise FormatError(
                f"a deflate block at uncompressed offset {start.out_offset} is too long to index "
                f"({out_len} bytes of output before the next block boundary)"
            )
        data += ZranContext(
            in_offset=start.in_offset,
            out_offset=start.out_offset,
            dict_offset=dict_offset,
            in_len=end_in - start.in_offset,
            out_len=out_len,
            dict_size=len(start.window),
            ctx_byte=start.byte,
            ctx_bits=start.bits,
        ).encode()
        dict_offset += len(start.window)
    for ctx in chunker.contexts:
        data += ctx.start.window
    return _MetaData(bytes(data), ci_size, len(chunker.contexts))


def _write(
    dst: ByteSink,
    root: Node,
    files: int,
    chunker: _ZranChunker,
    table: _MetaData,
    source: _Source,
    opts: Options,
) -> LayerBuild:
    out = Out(dst)
    blob_id = source.hexdigest()
    chunks = [zc.chunk for zc in chunker.chunks]
    toc: list[TocEntry] = []
    blobs: list[BlobEntry] = []
    blob_meta = b""
    entry: BlobEntry | None = None
    if chunks:
        meta = write_blob_meta(
            out,
            table.data,
            META_COMPRESSOR,
            FEATURES,
            len(chunks),
            zran=(table.ci_size, len(table.data) - table.ci_size, table.contexts),
        )
        toc.extend(meta.toc)
        toc.append(write_digests(out, chunks))
        entry = meta.blob_entry(
            blob_id=blob_id,
            chunk_size=opts.chunk_size,
            compressor=COMPRESSOR,
            digester=DIGESTER,
            compressed_size=source.size,
            uncompressed_size=chunker.u_off,
        )
        blobs.append(entry)
        blob_meta = meta.cache_file
    wopts = WriteOptions(
        chunk_size=opts.chunk_size,
        compressor=COMPRESSOR,
        digester=DIGESTER,
        prefetch=tuple(encode_name(p) for p in opts.prefetch_patterns),
    )
    bootstrap = write_bootstrap(root, blobs, wopts)
    toc_section = write_bootstrap_and_toc(out, bootstrap, toc)
    return LayerBuild(
        blob_digest="sha256:" + out.hash.hexdigest(),
        blob_size=out.pos,
        blob_id=blob_id,
        bootstrap=bootstrap,
        blob_meta=blob_meta,
        blob_entry=entry,
        chunk_count=len(chunks),
        uncompressed_size=chunker.u_off,
        files=files,
        toc=toc,
        meta_blob_toc=(hashlib.sha256(toc_section).digest(), len(toc_section)),
    )
