"""OCI-ref (zran) layers: the metadata-only blob, read back through an independent zran reader, fsck.erofs and
upstream's own zran textures."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.formats import soci
from accel.formats.nydus import (
    LayerBuild,
    build_ref_layer,
    read_blob,
    read_bootstrap,
    to_tree,
)
from accel.formats.nydus import constants as c
from accel.formats.nydus.blob import decode_ci_array, decode_zran_table
from accel.formats.nydus.ondisk import BlobMetaHeader, CiV2, ZranContext
from accel.formats.nydus.tree import iter_tree
from tests.support import zran_reader
from tests.support.nydus_layers import Item, make_tar, rich_layer

TEXTURES = Path(__file__).parents[3] / "data" / "nydus-zran"
TEXTURE_META = TEXTURES / "233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta"


def _files(tar: bytes) -> dict[bytes, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {
            ("/" + m.name.strip("/")).encode(): tf.extractfile(m).read()  # type: ignore[union-attr]
            for m in tf.getmembers()
            if m.isreg() or m.islnk()
        }


def _read_back(build: LayerBuild, gz: bytes) -> dict[bytes, bytes]:
    """Every regular file through the bootstrap, the zran table and ranged reads of the gzip layer."""
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return gz[offset : offset + size]

    meta = zran_reader.parse_meta(build.blob_meta)
    root = to_tree(read_bootstrap(build.bootstrap))
    out = {}
    for path, node in iter_tree(root):
        if node.is_reg:
            out[path] = b"".join(zran_reader.read_chunk(meta, ch.ci_index, read_at) for ch in node.chunks)
    assert all(offset + size <= len(gz) for offset, size in reads)
    return out


def _big_items(seed: int = 7) -> list[Item]:
    rnd = random.Random(seed)
    text = b"".join(b"%d: the quick brown fox jumps over the lazy dog\n" % i for i in range(120_000))
    return [
        *rich_layer(seed),
        Item("big/random", data=rnd.randbytes(2_500_000)),
        Item("big/text", data=text),
        Item("big/zeros", data=bytes(4_000_000)),
        Item("big/text-again", data=text),  # every chunk a repeat: deduplicated, as upstream does
    ]


def _members(tar: bytes, cuts: list[int], level: int = 6) -> bytes:
    bounds = [0, *cuts, len(tar)]
    return b"".join(gzip.compress(tar[a:b], level) for a, b in itertools.pairwise(bounds))


def _data_ends(tar: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return [m.offset_data + m.size for m in tf.getmembers() if m.isreg() and m.size]


TAR = make_tar(_big_items())
LAYOUTS = {
    "one member": lambda: gzip.compress(TAR, 6),
    "level 1": lambda: gzip.compress(TAR, 1),
    "level 9": lambda: gzip.compress(TAR, 9),
    "300 KB members": lambda: _members(TAR, list(range(300_001, len(TAR), 300_001))),
    # Every member ends exactly where a file's data ends: a context may not stop at a member's end.
    "members end with file data": lambda: _members(TAR, _data_ends(TAR)),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_file_reads_back_through_the_original_gzip(layout: str) -> None:
    gz = LAYOUTS[layout]()
    out = io.BytesIO()
    build = build_ref_layer(io.BytesIO(gz), out)
    assert build.blob_id == hashlib.sha256(gz).hexdigest(), "the chunks' blob is the original layer"
    assert _read_back(build, gz) == _files(TAR)
    assert build.blob_size == len(out.getvalue()) < len(gz) // 10, "metadata only, no copy of the data"
    blob = read_blob(out.getvalue())
    assert blob.section(c.ENTRY_BLOB) is None, "an OCI-ref blob has no chunk data section"
    assert blob.bootstrap() == build.bootstrap


def test_blob_table_entry_and_meta_are_upstreams_ref_layout() -> None:
    gz = gzip.compress(TAR, 6)
    build = build_ref_layer(io.BytesIO(gz), io.BytesIO())
    entry = read_bootstrap(build.bootstrap).blobs[0]
    assert entry.blob_id == hashlib.sha256(gz).hexdigest()
    assert entry.compressed_size == len(gz)
    assert (c.COMPRESSORS[entry.compression_algo], c.DIGESTERS[entry.digest_algo]) == ("gzip", "sha256")
    for flag in (c.BF_ZRAN, c.BF_CHUNK_INFO_V2, c.BF_SEPARATE, c.BF_ALIGNED, c.BF_INLINED_FS_META):
        assert entry.features & flag, hex(flag)
    header = BlobMetaHeader.decode(build.blob_meta[-4096:])
    assert header.features == entry.features and header.ci_entries == entry.chunk_count
    ci = build.blob_meta[: header.ci_uncompressed_size]
    chunks = decode_ci_array(ci, header)
    contexts, dicts = decode_zran_table(ci, header)
    assert len(contexts) == header.zran_count > 1
    for i, ch in enumerate(chunks):
        assert isinstance(ch, CiV2) and ch.flags == c.CI2_COMPRESSED | c.CI2_ZRAN, i
        ctx = contexts[ch.data >> 32]
        offset = ch.data & 0xFFFFFFFF
        assert offset + ch.uncompressed_size <= ctx.out_len <= c.MAX_CHUNK_SIZE
        # The chunk's compressed range lies inside its context's.
        assert ctx.in_offset <= ch.compressed_offset
        assert ch.compressed_offset + ch.compressed_size <= ctx.in_offset + ctx.in_len
    assert all(ctx.dict_size <= 32768 for ctx in contexts)
    assert sum(ctx.dict_size for ctx in contexts) == len(dicts)


def test_upstream_zran_meta_texture_decodes_and_re_encodes_byte_for_byte() -> None:
    raw = TEXTURE_META.read_bytes()
    header = BlobMetaHeader.decode(raw[-4096:])
    assert header.encode() == raw[-4096:]
    assert header.features & c.BF_ZRAN and header.features & c.BF_CHUNK_INFO_V2
    ci = raw[: header.ci_uncompressed_size]
    chunks = decode_ci_array(ci, header)
    contexts, dicts = decode_zran_table(ci, header)
    assert (len(chunks), len(contexts)) == (163, 21)
    assert b"".join(ch.encode() for ch in chunks) == ci[: header.zran_offset]  # type: ignore[union-attr]
    table = b"".join(ctx.encode() for ctx in contexts) + dicts
    assert table == ci[header.zran_offset :]
    # The independent reader agrees with ours on every entry.
    theirs = zran_reader.parse_meta(raw)
    assert [(t.zran_index, t.zran_offset, t.u_size) for t in theirs.chunks] == [
        (ch.data >> 32, ch.data & 0xFFFFFFFF, ch.uncompressed_size)  # type: ignore[union-attr]
        for ch in chunks
    ]
    assert [t.dict_offset for t in theirs.contexts] == [ctx.dict_offset for ctx in contexts]
    for ch in chunks:
        ctx = contexts[ch.data >> 32]  # type: ignore[union-attr]
        assert (ch.data & 0xFFFFFFFF) + ch.uncompressed_size <= ctx.out_len  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["zran-single-stream.tar.gz", "zran-zero-file.tar.gz"])
def test_upstream_zran_layer_textures_convert_and_read_back(name: str) -> None:
    gz = (TEXTURES / name).read_bytes()
    build = build_ref_layer(io.BytesIO(gz), io.BytesIO())
    want = _files(gzip.decompress(gz))
    assert want and _read_back(build, gz) == want


def test_a_second_tar_after_the_first_ones_end_is_not_read() -> None:
    """``zran-two-streams.tar.gz`` is two tar.gz files concatenated; like Go's and containerd's tar readers
    we stop at the first end-of-archive (upstream's generator test reads on with ``ignore_zeros``)."""
    gz = (TEXTURES / "zran-two-streams.tar.gz").read_bytes()
    build = build_ref_layer(io.BytesIO(gz), io.BytesIO())
    assert build.blob_id == hashlib.sha256(gz).hexdigest(), "the whole layer is still hashed"
    assert _read_back(build, gz) == _files(gzip.decompress(gz))


def test_non_gzip_and_broken_layers_are_refused() -> None:
    with pytest.raises(FormatError, match="gzip"):
        build_ref_layer(io.BytesIO(TAR), io.BytesIO())
    gz = gzip.compress(TAR, 6)
    with pytest.raises(FormatError, match="truncated"):
        build_ref_layer(io.BytesIO(gz[: len(gz) // 2]), io.BytesIO())
    corrupt = bytearray(gz)
    corrupt[len(gz) // 3 : len(gz) // 3 + 64] = bytes(64)
    with pytest.raises(FormatError):
        build_ref_layer(io.BytesIO(bytes(corrupt)), io.BytesIO())


def test_soci_and_nydus_index_the_same_block_boundaries() -> None:
    """One checkpointing implementation: every nydus context starts at a block boundary soci would also
    checkpoint with a small enough span, with the same offsets and bits."""
    gz = _members(TAR, list(range(700_001, len(TAR), 700_001)))
    build = build_ref_layer(io.BytesIO(gz), io.BytesIO())
    header = BlobMetaHeader.decode(build.blob_meta[-4096:])
    contexts, _ = decode_zran_table(build.blob_meta[: header.ci_uncompressed_size], header)
    ztoc = soci.build_ztoc(io.BytesIO(gz), span_size=1)  # a checkpoint at every block boundary
    from accel.formats.soci.zinfo import decode_gzip_zinfo

    points = {(p.compressed, p.uncompressed, p.bits) for p in decode_gzip_zinfo(ztoc.checkpoints).checkpoints}
    assert {(ctx.in_offset, ctx.out_offset, ctx.ctx_bits) for ctx in contexts} <= points


def test_zran_context_codec_round_trips() -> None:
    ctx = ZranContext(1 << 40, 3 << 30, 65536, 700_000, 2 << 20, 32768, 0xAB, 5)
    raw = ctx.encode()
    assert len(raw) == ZranContext.SIZE and ZranContext.decode(raw) == ctx


@pytest.mark.skipif(shutil.which("fsck.erofs") is None, reason="erofs-utils is not installed")
def test_fsck_erofs_extracts_the_tree_from_the_zran_chunks(tmp_path: Path) -> None:
    """fsck.erofs accepts the bootstrap and, given the device image assembled from chunks inflated out of
    the original gzip layer by the independent reader, extracts files equal to the source."""
    gz = gzip.compress(TAR, 6)
    build = build_ref_layer(io.BytesIO(gz), io.BytesIO())
    bs = read_bootstrap(build.bootstrap)
    meta = zran_reader.parse_meta(build.blob_meta)
    device = bytearray(bs.devices[0].blocks * 4096)
    for i, ch in enumerate(meta.chunks):
        data = zran_reader.read_chunk(meta, i, lambda o, n: gz[o : o + n])
        device[ch.u_off : ch.u_off + len(data)] = data
    (tmp_path / "boot").write_bytes(build.bootstrap)
    (tmp_path / "dev").write_bytes(device)
    dest = tmp_path / "x"
    res = subprocess.run(
        ["fsck.erofs", f"--device={tmp_path / 'dev'}", f"--extract={dest}", str(tmp_path / "boot")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    extracted = {
        ("/" + str(p.relative_to(dest))).encode(): p.read_bytes()
        for p in dest.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    want = _files(TAR)
    assert {k: extracted.get(k) for k in want} == want
