"""The per-layer builder: tar -> nydus blob, checked with the reader and an independent tar model."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from accel.errors import FormatError
from accel.formats.nydus import (
    LayerBuild,
    Options,
    build_layer,
    file_tree,
    read_blob,
    read_bootstrap,
    validate,
)
from accel.formats.nydus import constants as c
from accel.formats.nydus.blob import BlobFile
from accel.formats.nydus.reader import Bootstrap
from tests.support.nydus_layers import Item, make_tar, rich_layer
from tests.support.oci_apply import apply_layers, as_tree

DATA = Path(__file__).parents[3] / "data" / "nydus"


class _Stream(io.RawIOBase):
    """A non-seekable stream, like a pipe or an HTTP body."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), len(self._data) - self._pos, 65536)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _build(layer: bytes, opts: Options | None = None) -> tuple[LayerBuild, bytes]:
    out = io.BytesIO()
    res = build_layer(io.BufferedReader(_Stream(layer)), out, opts or Options())
    return res, out.getvalue()


def _open(raw: bytes) -> tuple[BlobFile, Bootstrap]:
    blob = read_blob(raw)
    boot = blob.bootstrap()
    assert boot is not None
    bs = validate(boot, {c.PLACEHOLDER_BLOB_ID: blob} if blob.chunks else None)
    return blob, bs


def _tree(blob: BlobFile, bs: Bootstrap) -> list[dict[str, Any]]:
    devices = [blob.device_image(bs.compressor, bs.devices[0].blocks * 4096)] if bs.devices else []
    out = file_tree(bs, devices)
    for item in out:
        for key in ("nlink", "hardlink_group", "rdev", "mtime_nsec"):
            item.pop(key, None)
    return out


@pytest.fixture(scope="module")
def rich() -> tuple[bytes, LayerBuild, bytes]:
    layer = make_tar(rich_layer())
    res, raw = _build(layer)
    return layer, res, raw


def test_rich_layer_tree_equals_tar_model(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    layer, res, raw = rich
    blob, bs = _open(raw)
    assert _tree(blob, bs) == as_tree(apply_layers([layer]))
    assert res.blob_digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert res.blob_id == res.blob_digest.removeprefix("sha256:")
    assert res.blob_size == len(raw)
    assert res.bootstrap == blob.bootstrap()


def test_rich_layer_structure(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    _, res, raw = rich
    blob, bs = _open(raw)
    names = [s.name for s in blob.sections]
    assert names == ["image.blob", "blob.meta", "blob.digest", "image.boot", "rafs.blob.toc"]
    assert [e.name for e in blob.toc] == [
        "image.blob",
        "blob.meta",
        "blob.meta.header",
        "blob.digest",
        "image.boot",
    ]
    for sec in blob.sections:
        info = tarfile.TarInfo.frombuf(raw[sec.header_offset : sec.header_offset + 512], "utf-8", "strict")
        assert (info.name, info.size) == (sec.name, sec.size)
    entry = bs.blobs[0]
    assert entry == res.blob_entry
    assert entry.blob_id == c.PLACEHOLDER_BLOB_ID
    assert entry.features == 0x70000023
    boot_sec = blob.section("image.boot")
    assert boot_sec is not None and entry.compressed_size == boot_sec.data_offset
    assert entry.blob_toc_size == 0 and entry.blob_toc_digest == bytes(32)
    assert bs.ext.flags == 0x0100_0194 | c.SF_HAS_XATTR
    assert bs.prefetch == [c.ROOT_NID]
    assert bs.superblock.root_nid == c.ROOT_NID and bs.superblock.meta_blkaddr == 2
    assert bs.superblock.blocks == bs.devices[0].blocks == entry.uncompressed_size // 4096
    assert bs.superblock.inos == len(bs.entries)
    assert all(not rec.inode.compact for rec in bs.inodes.values())
    assert blob.meta_header is not None
    ci = b"".join(ch.encode() for ch in blob.chunks)
    assert res.blob_meta == ci + bytes(-len(ci) % 4096) + blob.meta_header.encode()
    assert len(res.blob_meta) % 4096 == 0
    key = [(d.uncompressed_offset, d.compressed_size) for d in blob.chunks]
    assert key == sorted(key, key=lambda k: k[0]) and all(u % 4096 == 0 for u, _ in key)


def test_chunks_dedup_and_formats(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    _, res, raw = rich
    blob, bs = _open(raw)
    deep = bs.inode_at(b"/a/b/c/deep.txt")
    assert bs.inode_at(b"/a/dup-of-text").chunks == deep.chunks
    zeros = bs.inode_at(b"/a/zeros16m")
    assert len(zeros.chunks) == 16
    assert len({a.ci_index for a in zeros.chunks}) == 3  # head, fourteen identical zero chunks, tail
    assert zeros.inode.i_u == 0x28
    big = bs.inode_at(b"/a/big.bin")
    assert len(big.chunks) == 3 and big.inode.i_u == 0x20 | (22 - 12)  # contiguous: next_pow2(size)
    exact = bs.inode_at(b"/a/exact-1m")
    (addr,) = exact.chunks
    assert not blob.chunks[addr.ci_index].compressed  # random data stays raw
    table = {(ch.blob_index, ch.index): ch for ch in bs.chunk_table}
    assert table[(0, addr.ci_index)].flags & c.CHUNK_COMPRESSED == 0
    assert table[(0, deep.chunks[0].ci_index)].flags & c.CHUNK_COMPRESSED
    assert len(bs.chunk_table) == res.chunk_count == len(blob.chunks)
    digests = [ch.digest for ch in bs.chunk_table]
    assert digests == sorted(digests)


def test_hardlinks_share_one_inode(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    _, _, raw = rich
    _, bs = _open(raw)
    nids = dict(bs.entries)
    assert nids[b"/a/big.bin"] == nids[b"/a/zz-hardlink-2"] == nids[b"/a/zz-hardlink-3"]
    assert bs.inodes[nids[b"/a/big.bin"]].inode.nlink == 3
    assert nids[b"/a/hardlink-to-deep"] == nids[b"/a/b/c/deep.txt"]
    inos = [bs.inodes[n].inode.ino for p, n in bs.entries]
    assert bs.inodes[c.ROOT_NID].inode.ino == 1
    assert len(set(inos)) == len(bs.entries) - 3


def test_special_files_and_xattrs(rich: tuple[bytes, LayerBuild, bytes]) -> None:
    _, _, raw = rich
    _, bs = _open(raw)
    null = bs.inode_at(b"/dev/null").inode
    assert stat.S_ISCHR(null.mode) and null.i_u == 0x103 and null.size == 0
    assert bs.inode_at(b"/dev/sda1").inode.i_u == 0x801
    assert stat.S_ISFIFO(bs.inode_at(b"/dev/fifo").inode.mode)
    assert sorted(bs.inode_at(b"/xattr-file").xattrs) == [(b"trusted.t", b"v"), (b"user.comment", b"hello")]
    assert bs.inode_at(b"/one-xattr").xattrs == [(b"security.selinux", b"system_u:object_r:bin_t:s0")]
    long_link = bs.inode_at(b"/a/long-link")
    assert long_link.symlink == b"x/" * 900 + b"end"
    assert bs.inode_at(b"/ids").inode.uid == 100000
    many = bs.inode_at(b"/many")
    assert many.inode.size > 4096 and len(many.dirents) == 302
    names = [d.name for d in bs.inode_at(b"/").dirents]
    assert names[:4] == [b"!first", b"#hash", b"-dash", b"."]


@pytest.mark.parametrize(
    "opts",
    [
        Options(compressor="lz4_block"),
        Options(compressor="none", digester="sha256"),
        Options(chunk_size=0x10000, threads=1),
    ],
)
def test_other_options(opts: Options) -> None:
    items = [it for it in rich_layer(seed=2) if not it.name.startswith("many/")]
    layer = make_tar(items)
    _, raw = _build(layer, opts)
    blob, bs = _open(raw)
    assert bs.compressor == opts.compressor and bs.digester == opts.digester
    assert bs.chunk_size == opts.chunk_size
    assert _tree(blob, bs) == as_tree(apply_layers([layer]))
    if opts.compressor == "none":
        assert not any(ci.compressed for ci in blob.chunks)


def test_output_is_deterministic_across_thread_counts() -> None:
    layer = make_tar(rich_layer(seed=3)[:20])
    one = _build(layer, Options(threads=1))[1]
    four = _build(layer, Options(threads=4))[1]
    assert one == four


def test_metadata_only_layer() -> None:
    layer = make_tar([Item("etc/", "dir"), Item("etc/link", "symlink", target="x"), Item("etc/empty")])
    res, raw = _build(layer)
    blob, bs = _open(raw)
    assert [s.name for s in blob.sections] == ["image.boot", "rafs.blob.toc"]
    assert bs.blobs == [] and bs.superblock.meta_blkaddr == 0 and bs.superblock.root_nid == c.ROOT_NID
    assert bs.prefetch == [] and bs.superblock.blocks == 0
    assert res.blob_entry is None and res.blob_meta == b""
    root = file_tree(bs)[0]
    assert (root["mode"], root["mtime"]) == ("0755", 0)  # synthesised root


def test_root_entry_and_replacement() -> None:
    layer = make_tar(
        [
            Item("./", "dir", mode=0o700, mtime=5),
            Item("f", data=b"first"),
            Item("d/", "dir", mode=0o711),
            Item("d/x", data=b"x"),
            Item("f", data=b"second"),
            Item("d/", "dir", mode=0o755, mtime=9),
            Item("stargz.index.json", data=b"{}"),
            Item(".prefetch.landmark", data=b"x"),
        ]
    )
    _, raw = _build(layer)
    blob, bs = _open(raw)
    tree = {e["path"]: e for e in _tree(blob, bs)}
    assert set(tree) == {"/", "/f", "/d", "/d/x"}
    assert (tree["/"]["mode"], tree["/"]["mtime"]) == ("0700", 5)
    assert tree["/f"]["sha256"] == hashlib.sha256(b"second").hexdigest()
    assert (tree["/d"]["mode"], tree["/d"]["mtime"]) == ("0755", 9)
    assert bs.superblock.inos == 4


def test_all_entry_type_fixture() -> None:
    layer = (DATA / "input-tars" / "all-entry-type.tar").read_bytes()
    _, raw = _build(layer)
    blob, bs = _open(raw)
    tree = {e["path"]: e for e in file_tree(bs, [blob.device_image("zstd", bs.devices[0].blocks * 4096)])}
    assert tree["/tar/dir1/dir3/hardlink1.txt"]["nlink"] == 4
    assert tree["/tar/dir2/symlink1.txt"]["target"] == "../dir1/dir3/file1.txt"
    nids = dict(bs.entries)
    assert nids[b"/tar/dir2/hardlink3.txt"] == nids[b"/tar/dir1/dir3/hardlink1.txt"]
    assert tree["/"]["mtime"] == 0


def _raw_tar_header(name: bytes, size: int, typeflag: bytes = b"0", link: bytes = b"") -> bytes:
    hdr = bytearray(512)
    hdr[: len(name)] = name
    hdr[100:108] = b"0000644\0"
    hdr[108:124] = b"0000000\0" * 2
    hdr[124:136] = b"%011o\0" % size
    hdr[136:148] = b"00000000000\0"
    hdr[156:157] = typeflag
    hdr[157 : 157 + len(link)] = link
    hdr[257:265] = b"ustar\x0000"
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr)


@pytest.mark.parametrize(
    ("layer", "entry"),
    [
        (make_tar([Item("a", data=b"x" * 5000)])[:1536], "a"),  # truncated content
        (_raw_tar_header(b"../escape", 0) + bytes(1024), "../escape"),
        (_raw_tar_header(b"a/../../b", 0) + bytes(1024), "a/../../b"),
        (_raw_tar_header(b"ok/../x", 0) + bytes(1024), "ok/../x"),
        (_raw_tar_header(b"huge", 1 << 40) + bytes(4096), "huge"),  # absurd size, short stream
        (_raw_tar_header(b"link", 0, b"1", b"missing") + bytes(1024), "link"),
        (_raw_tar_header(b"esc", 0, b"1", b"../../etc/passwd") + bytes(1024), "esc"),
        (make_tar([Item("x", xattrs={"bogus.name": "v"})]), "x"),
        (make_tar([Item("f", data=b"1"), Item("f/g", data=b"2")]), "f/g"),
        (_raw_tar_header(b"cont", 0, b"7") + bytes(1024), "cont"),
    ],
)
def test_hostile_layers_raise_format_error(layer: bytes, entry: str) -> None:
    with pytest.raises(FormatError) as info:
        _build(layer)
    assert info.value.entry == entry


def test_bad_options_are_rejected() -> None:
    for opts in (Options(chunk_size=3000), Options(compressor="gzip"), Options(prefetch_patterns=("rel",))):
        with pytest.raises(FormatError):
            _build(make_tar([Item("a", data=b"1")]), opts)


def test_reader_accepts_builder_output_bytes_only_once_per_chunk() -> None:
    """Every chunk lies inside image.blob, and the blob id default is the digest of what was written."""
    layer = make_tar([Item("a", data=b"abc" * 100000), Item("b", data=b"abc" * 100000)])
    res, raw = _build(layer)
    blob, bs = _open(raw)
    assert res.chunk_count == 1 and len(blob.chunks) == 1
    sec = blob.section("image.blob")
    assert sec is not None and sec.size == blob.chunks[0].compressed_size
    assert read_bootstrap(res.bootstrap).entries == bs.entries


def test_ids_and_mtime_come_from_the_ustar_header_not_pax() -> None:
    """Spec 3: PAX uid/gid/mtime records are not consulted (python's tarfile leaves 0 in the header)."""
    layer = make_tar([Item("big-ids", data=b"1", uid=3_000_000, gid=5, mtime=7)])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        assert tf.getmembers()[0].pax_headers["uid"] == "3000000"
    _, raw = _build(layer)
    _, bs = _open(raw)
    ino = bs.inode_at(b"/big-ids").inode
    assert (ino.uid, ino.gid, ino.mtime) == (0, 5, 7)
    gnu = make_tar([Item("gnu-ids", data=b"1", uid=3_000_000, gid=5)], fmt=tarfile.GNU_FORMAT)
    _, raw = _build(gnu)
    _, bs = _open(raw)
    assert bs.inode_at(b"/gnu-ids").inode.uid == 3_000_000  # base-256 in the header itself


def test_rafs_versions_other_than_5_and_6_are_unsupported() -> None:
    with pytest.raises(FormatError):
        _build(make_tar([Item("a", data=b"1")]), Options(fs_version=4))
