"""RAFS v5 layers (``Options(fs_version=5)``), aligned chunks and the v5 merge, read back through the v5
reader and the blobs, against an independent tar model."""

from __future__ import annotations

import io
import itertools
import posixpath
import stat
import tarfile

import pytest

from accel.errors import FormatError
from accel.formats.nydus import LayerBuild, Options, build_layer, merge
from accel.formats.nydus import constants as c
from accel.formats.nydus.chunkcodec import digest_of
from accel.formats.nydus.ondisk import decode_tar_header
from accel.formats.nydus.reader_v5 import read_bootstrap_v5
from accel.formats.nydus.tail import read_layer_meta
from accel.formats.nydus.writer import makedev
from accel.formats.nydus.writer_v5 import FLAG_HARDLINK, NO_RDEV
from tests.support.nydus_layers import Item, make_tar, rich_layer
from tests.support.nydus_v5 import file_data, v5_tree
from tests.support.oci_apply import apply_layers, as_tree
from tests.unit.formats.nydus.test_nydus_merge import LAYERS

V5 = Options(fs_version=5)


def _build(layer: bytes, opts: Options = V5) -> tuple[LayerBuild, bytes]:
    out = io.BytesIO()
    res = build_layer(io.BytesIO(layer), out, opts)
    return res, out.getvalue()


@pytest.fixture(scope="module")
def rich() -> tuple[bytes, LayerBuild, bytes]:
    layer = make_tar(rich_layer())
    res, raw = _build(layer)
    return layer, res, raw


def test_v5_layer_reads_back_as_the_tar(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    layer, res, raw = rich
    assert v5_tree(res.bootstrap, {c.PLACEHOLDER_BLOB_ID: raw}) == as_tree(apply_layers([layer]))


def test_v5_layer_metadata(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    layer, res, raw = rich
    bs = read_bootstrap_v5(res.bootstrap)
    recs = {p: bs.inodes[i] for p, i in bs.entries}
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        members = {posixpath.normpath("/" + m.name): m for m in tf.getmembers()}
    for path, m in members.items():
        if path == "/":
            continue
        rec = recs[path.encode("utf-8", "surrogateescape")]
        want = {
            k[len("SCHILY.xattr.") :]: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")
        }
        got = {k.decode(): v.decode() for k, v in rec.xattrs.items()}
        assert got == want, path  # a dict: the pair order is not part of the format
        if m.ischr() or m.isblk():
            assert rec.rdev == makedev(m.devmajor, m.devminor)
        elif not m.isfifo():
            assert rec.rdev == NO_RDEV, path
    deep, link = recs[b"/a/b/c/deep.txt"], recs[b"/a/hardlink-to-deep"]
    assert deep.ino == link.ino and deep.nlink == link.nlink == 2 and deep.offset != link.offset
    assert deep.flags & FLAG_HARDLINK and link.flags & FLAG_HARDLINK
    assert recs[b"/a/big.bin"].nlink == 3
    assert bs.inodes_count == len(bs.inodes) - 3
    assert bs.prefetch == [1]
    assert bs.flags == c.SF_COMPRESSION_ZSTD | c.SF_HASH_BLAKE3 | c.SF_EXPLICIT_UID_GID | c.SF_HAS_XATTR
    # Every chunk is what its digest says, and dedup made one chunk of the fourteen zero chunks.
    zeros = recs[b"/a/zeros16m"]
    assert len(zeros.chunks) == 16 and len({ch.index for ch in zeros.chunks}) == 3
    for rec in recs.values():
        if stat.S_ISREG(rec.mode):
            data = file_data(bs, rec, {c.PLACEHOLDER_BLOB_ID: raw})
            for i, ch in enumerate(rec.chunks):
                piece = data[i * bs.block_size : i * bs.block_size + ch.uncompressed_size]
                assert digest_of("blake3", piece) == ch.digest


def test_v5_blob_layout(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    _, res, raw = rich
    # From the end: image.boot (the uncompressed bootstrap), then image.blob; no blob meta, no ToC.
    boot_hdr = decode_tar_header(raw[-512:])
    assert (boot_hdr.name, boot_hdr.size) == (c.ENTRY_BOOTSTRAP, len(res.bootstrap))
    boot_at = len(raw) - 512 - boot_hdr.size
    assert raw[boot_at : boot_at + boot_hdr.size] == res.bootstrap
    blob_hdr = decode_tar_header(raw[boot_at - 512 : boot_at])
    assert blob_hdr.name == c.ENTRY_BLOB and blob_hdr.size == boot_at - 512
    (entry,) = read_bootstrap_v5(res.bootstrap).blobs
    assert entry.blob_id == c.PLACEHOLDER_BLOB_ID
    assert entry.features == c.BF_INLINED_FS_META | c.BF_HAS_TAR_HEADER | c.BF_CAP_TAR_TOC
    assert entry.compressed_size == boot_at and entry.chunk_count == res.chunk_count
    assert res.blob_meta == b"" and res.toc == []
    # What a later conversion reads from the tail of a cached blob.
    assert read_layer_meta(lambda off, n: raw[off : off + n], len(raw)) == (res.bootstrap, b"")


def _offsets(res: LayerBuild) -> list[tuple[int, int]]:
    bs = read_bootstrap_v5(res.bootstrap)
    chunks = {ch.index: ch for rec in bs.inodes.values() for ch in rec.chunks}
    return [(chunks[i].uncompressed_offset, chunks[i].uncompressed_size) for i in sorted(chunks)]


def test_v5_chunks_are_packed_unless_aligned(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    layer, res, _ = rich
    packed = _offsets(res)
    assert packed[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(packed))
    assert res.uncompressed_size == packed[-1][0] + packed[-1][1]
    aligned_res, aligned_raw = _build(layer, Options(fs_version=5, align_chunk=True))
    aligned = _offsets(aligned_res)
    assert [size for _, size in aligned] == [size for _, size in packed]
    assert all(off % 4096 == 0 for off, _ in aligned)
    assert all(b[0] - a[0] == -(-a[1] // 4096) * 4096 for a, b in itertools.pairwise(aligned))
    assert aligned_res.uncompressed_size == aligned[-1][0] + -(-aligned[-1][1] // 4096) * 4096
    assert v5_tree(aligned_res.bootstrap, {c.PLACEHOLDER_BLOB_ID: aligned_raw}) == as_tree(
        apply_layers([layer])
    )


def test_align_chunk_is_implied_by_v6() -> None:
    layer = make_tar([Item("a", data=b"a" * 5000), Item("b", data=b"b" * 3)])
    assert _build(layer, Options())[1] == _build(layer, Options(align_chunk=True))[1]


def test_v5_layer_without_files_has_no_blob() -> None:
    res, raw = _build(make_tar([Item("d/", "dir"), Item("d/l", "symlink", target="x")]))
    bs = read_bootstrap_v5(res.bootstrap)
    assert bs.blobs == [] and res.blob_entry is None and res.chunk_count == 0
    assert decode_tar_header(raw[-512:]).name == c.ENTRY_BOOTSTRAP and len(raw) == len(res.bootstrap) + 512


def test_unsupported_rafs_versions_are_refused() -> None:
    for version in (4, 7):
        with pytest.raises(FormatError, match="5 and 6"):
            _build(make_tar([Item("a", data=b"1")]), Options(fs_version=version))


def test_v5_merge_equals_oci_layer_apply() -> None:
    tars = [make_tar(items) for items in LAYERS]
    inputs: list[tuple[bytes, str]] = []
    blobs: dict[str, bytes] = {}
    for tar in tars:
        res, raw = _build(tar)
        inputs.append((res.bootstrap, res.blob_id))
        blobs[res.blob_id] = raw
    boot = merge(inputs)
    assert v5_tree(boot, blobs) == as_tree(apply_layers(tars))
    bs = read_bootstrap_v5(boot)
    assert all(b.blob_id in blobs for b in bs.blobs) and len(bs.blobs) == len({b.blob_id for b in bs.blobs})
    assert all(b.features == c.BF_HAS_TAR_HEADER | c.BF_CAP_TAR_TOC for b in bs.blobs)
    assert bs.prefetch == [1]
    recs = {p: bs.inodes[i] for p, i in bs.entries}
    assert recs[b"/h/orig"].ino == recs[b"/h/link"].ino and recs[b"/h/orig"].nlink == 2
    # Directories the merge creates keep the tar builder's i_rdev.
    assert recs[b"/c"].rdev == NO_RDEV


def test_v5_and_v6_layers_do_not_merge() -> None:
    tar = make_tar([Item("a", data=b"1")])
    v5, _ = _build(tar)
    v6, _ = _build(tar, Options())
    with pytest.raises(FormatError, match="cannot merge"):
        merge([(v5.bootstrap, "a" * 64), (v6.bootstrap, "b" * 64)])
