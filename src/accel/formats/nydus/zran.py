"""OCI-ref ("zran") layers: a Nydus blob that holds metadata only, its chunks pointing into the original gzip
layer (what ``nydus-image create --type targz-ref --blob-inline-meta --features blob-toc`` writes).

No chunk data is written. Each file chunk is a ci v2 entry flagged ZRAN that names a *zran context*, a
place where inflating can restart in the gzip layer (a deflate block boundary: compressed and uncompressed
offsets, the unused bits of the byte before it, the window before it), and its offset in that context's
output. nydusd fetches the context's compressed range from the original layer, inflates it and slices the
chunk out (``storage/src/cache/mod.rs`` ``decompress_zran``). The blob meta is the ci array followed by the
context table and the dictionaries; the blob id is the original layer's digest, the compressor gzip and
the chunk digester sha256, as upstream forces for ref conversions.

Contexts are chosen at chunk starts, as upstream's generator does (``ZranGenerator::begin_read``): a chunk
continues the current context unless a newer block boundary lies before it and the context already spans
half a chunk of compressed input or would pass two chunks of output, or a gzip member began since. A
context's output ends with its last chunk (one byte later where that is the end of a gzip member, which
nydusd's decoder cannot stop at), and its compressed range at the first block boundary after that.
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
# How far a context may reach, in chunks of output (half as much compressed input) before a chunk starts a
# new one. Upstream's generator uses 1; every context costs a 32 KiB dictionary in the blob meta, which
# nydusd loads before the first read, so we take 2: half the metadata, at most twice the inflating per
# cold read (see the README's Nydus section for the measurement).
CONTEXT_SPAN = 2
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
    member: int
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
    """Keeps every block boundary (for contexts and the chunks' compressed ranges) as a few numbers; a
    context's window is copied out of the ring only when a chunk opens one there."""

    def __init__(self, source: ByteSource) -> None:
        super().__init__(source, background=True, ring_size=_RING)
        self.bounds_in = array("Q")
        self.bounds_out = array("Q")
        self._bits = array("B")
        self._bytes = array("B")
        self._members = array("I")
        self.member_starts = array("Q", [0])

    def at_boundary(self, bits: int) -> None:
        out = self.uncompressed_size
        if out == self.member_start and self.members > len(self.member_starts):
            self.member_starts.append(out)
        self._bits.append(bits)
        self._bytes.append(self.previous_byte() if bits else 0)
        self._members.append(self.members)
        self.bounds_in.append(self.compressed_size)
        self.bounds_out.append(out)  # last: a reader that sees this boundary sees all of it

    def boundary_before(self, offset: int) -> int:
        """The index of the last boundary at or before uncompressed ``offset`` (-1 if none): one the reader
        has read past, so the inflating thread has recorded it, and its window is still in the ring."""
        return bisect_right(self.bounds_out, offset) - 1

    def member_of(self, index: int) -> int:
        return self._members[index]

    def boundary(self, index: int) -> _Boundary:
        """Boundary ``index`` with its window (copied now, while the ring still holds it)."""
        out, member = self.bounds_out[index], self._members[index]
        # The dictionary is the member's own output only: what inflateGetDictionary gives upstream.
        have = min(WINDOW_SIZE, out - self.member_starts[member - 1])
        window = self.output_before(out, have) if have else b""
        return _Boundary(
            index, self.bounds_in[index], out, self._bits[index], self._bytes[index], member, window
        )


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
        z = self.inflater
        newest = z.boundary_before(offset)
        if newest < 0:
            raise FormatError(f"no deflate block boundary before file data at offset {offset}")
        cur = self.contexts[-1] if self.contexts else None
        if cur is None or z.member_of(newest) != cur.start.member:
            return self._open(newest, offset)
        if newest != cur.start.index:
            spanned_in = z.bounds_in[newest] - cur.start.in_offset
            spanned_out = offset - cur.start.out_offset
            if (
                spanned_in >= self.chunk_size * CONTEXT_SPAN // 2
                or spanned_out >= self.chunk_size * CONTEXT_SPAN
                or offset - cur.end_out > self.chunk_size
            ):
                return self._open(newest, offset)
        if offset + size - cur.start.out_offset > MAX_CONTEXT_OUTPUT:
            if newest == cur.start.index:
                raise FormatError(
                    f"the gzip stream has no deflate block boundary in the {MAX_CONTEXT_OUTPUT >> 20} MiB "
                    f"before offset {offset + size}: it cannot be indexed for random access"
                )
            return self._open(newest, offset)
        return cur

    def _open(self, boundary: int, offset: int) -> _Context:
        ctx = _Context(self.inflater.boundary(boundary), offset)
        self.contexts.append(ctx)
        return ctx


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
    inflater = _Inflater(_Prefixed(head, source))
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
    b_in, b_out = inflater.bounds_in, inflater.bounds_out
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
