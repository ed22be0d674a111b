"""The reader against the real nydus fixtures: decoded layout, file tree, re-encoding, blob integrity."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from accel.errors import FormatError
from accel.formats.nydus import (
    blob_layout,
    bootstrap_layout,
    file_tree,
    read_blob,
    read_bootstrap,
    stripped_blob_id,
    to_tree,
    validate,
    verify_chunk_digests,
)
from accel.formats.nydus import constants as c
from accel.formats.nydus.ondisk import (
    BlobEntry,
    BlobMetaHeader,
    ChunkAddr,
    ChunkInfo,
    CiV1,
    Device,
    ExtSuperBlock,
    Inode,
    SuperBlock,
    TocEntry,
    decode_tar_header,
    tar_header,
)
from accel.formats.nydus.writer import WriteOptions, write_bootstrap

DATA = Path(__file__).parents[3] / "data" / "nydus"
SHARED = Path(__file__).parents[4] / ".." / "shared" / "fixtures" / "nydus"
SEP_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
INLINE_NAME = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
COMPAT_2023 = WriteOptions(
    prefetch=(),
    encryption_none_flag=False,
    mapped_blkaddr_align=0x200000,
    root_ino=0,
    contiguous_chunk_format=False,
)


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _old_boot() -> bytes:
    with tarfile.open(DATA / "v6-bootstrap-only" / "v6-bootstrap-chunk-pos-438272.tar.gz") as tf:
        f = tf.extractfile("image/image.boot")
        assert f is not None
        return f.read()


def test_separate_bootstrap_layout_and_tree() -> None:
    expected = _json(DATA / "v6-separate" / "expected-layout.json")
    bs = read_bootstrap((DATA / "v6-separate" / "rafs-v6-2.2.boot").read_bytes())
    assert bootstrap_layout(bs) == expected["rafs-v6-2.2.boot"]
    blob = read_blob((DATA / "v6-separate" / "blobs" / SEP_ID).read_bytes())
    assert blob_layout(blob) == expected[SEP_ID]
    device = blob.device_image("zstd", bs.devices[0].blocks * c.BLOCK_SIZE)
    assert device == (DATA / "v6-separate" / f"{SEP_ID}.uncompressed").read_bytes()
    assert file_tree(bs, [device]) == _json(DATA / "v6-separate" / "expected-tree.json")
    validate(bs, {SEP_ID: blob})


def test_inline_blob_layout_and_tree() -> None:
    expected = _json(DATA / "v6-inline-toc" / "expected-layout.json")
    raw = (DATA / "v6-inline-toc" / INLINE_NAME).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == INLINE_NAME
    blob = read_blob(raw)
    assert blob_layout(blob) == expected[INLINE_NAME]
    boot = blob.bootstrap()
    assert boot == (DATA / "v6-inline-toc" / "image.boot").read_bytes()
    bs = read_bootstrap(boot)
    assert bootstrap_layout(bs) == expected["image.boot"]
    device = blob.device_image("zstd", bs.devices[0].blocks * c.BLOCK_SIZE)
    assert device == (DATA / "v6-inline-toc" / f"{INLINE_NAME}.uncompressed").read_bytes()
    assert file_tree(bs, [device]) == _json(DATA / "v6-inline-toc" / "expected-tree.json")
    # The inlined bootstrap names the blob by the sha256 of the blob prefix up to the blob.meta header.
    meta = blob.section(c.ENTRY_META)
    assert meta is not None
    assert hashlib.sha256(raw[: meta.data_offset - 512]).hexdigest() != bs.blobs[0].blob_id
    validate(bs, {bs.blobs[0].blob_id: blob})


def test_bootstrap_only_tree() -> None:
    bs = read_bootstrap(_old_boot())
    assert file_tree(bs) == _json(DATA / "v6-bootstrap-only" / "expected-tree.json")
    assert bs.compressor == "lz4_block"
    assert len(bs.entries) == 3517


def test_blob_ids_and_digests() -> None:
    blob = read_blob((DATA / "v6-separate" / "blobs" / SEP_ID).read_bytes())
    assert stripped_blob_id(blob) == SEP_ID
    assert hashlib.sha256(blob.data).hexdigest().startswith("4b16fb83")
    digests = verify_chunk_digests(blob, "zstd", "blake3")
    bs = read_bootstrap((DATA / "v6-separate" / "rafs-v6-2.2.boot").read_bytes())
    assert sorted(digests) == sorted(ch.digest for ch in bs.chunk_table)
    assert blob.toc_digest == bs.blobs[0].blob_toc_digest
    assert bs.blobs[0].blob_toc_size == len(blob.toc) * 128 + 512


@pytest.mark.parametrize(
    ("path", "opts"),
    [
        ("v6-separate/rafs-v6-2.2.boot", COMPAT_2023),
        ("v6-inline-toc/image.boot", dataclasses.replace(COMPAT_2023, mapped_blkaddr_align=0)),
    ],
)
def test_whole_bootstrap_reencodes_identically(path: str, opts: WriteOptions) -> None:
    data = (DATA / path).read_bytes()
    bs = read_bootstrap(data)
    opts = dataclasses.replace(opts, compressor=bs.compressor, digester=bs.digester)
    assert write_bootstrap(to_tree(bs), bs.blobs, opts) == data


def test_old_bootstrap_relayout_matches_except_known_differences() -> None:
    """The 2022 image: same nids and offsets; differences are the documented version quirks (spec 7)."""
    data = _old_boot()
    bs = read_bootstrap(data)
    opts = dataclasses.replace(
        COMPAT_2023,
        compressor=bs.compressor,
        digester=bs.digester,
        explicit_uid_gid=False,
        mapped_blkaddr_align=0,
        root_ino=1,
        prefetch=(b"/bin",),
    )
    out = read_bootstrap(write_bootstrap(to_tree(bs), bs.blobs, opts))
    mine, theirs = bootstrap_layout(out), bootstrap_layout(bs)
    assert mine["ext_superblock"] == theirs["ext_superblock"]
    assert mine["blob_table"] == theirs["blob_table"] and mine["devices"] == theirs["devices"]
    assert out.prefetch == bs.prefetch
    assert theirs["superblock"]["blocks"] == 4096  # the 2022 fixed-value bug
    assert mine["superblock"]["blocks"] == bs.devices[0].blocks
    key = lambda d: (d["digest"], d["blob_index"])  # noqa: E731
    assert sorted(mine["chunk_table"], key=key) == sorted(theirs["chunk_table"], key=key)
    assert mine["chunk_table"] == sorted(mine["chunk_table"], key=key)
    diffs = [(a, b) for a, b in zip(mine["inodes"], theirs["inodes"], strict=True) if a != b]
    for a, b in diffs:
        # Old hardlinks: separate inodes with nlink 2 that we see as two single-link files.
        assert {k: v for k, v in a.items() if k not in ("i_nlink", "i_ino")} == {
            k: v for k, v in b.items() if k not in ("i_nlink", "i_ino")
        }
        assert b["i_nlink"] == 2
    assert 0 < len(diffs) < 20


def _roundtrip(cls: Any, raw: bytes) -> None:
    assert cls.decode(raw).encode() == raw


def test_structs_reencode_identically() -> None:
    data = (DATA / "v6-separate" / "rafs-v6-2.2.boot").read_bytes()
    bs = read_bootstrap(data)
    _roundtrip(SuperBlock, data[1024:1152])
    _roundtrip(ExtSuperBlock, data[1152:1408])
    _roundtrip(Device, data[1408:1536])
    _roundtrip(BlobEntry, data[4096:4352])
    start = bs.ext.chunk_table_offset
    for i in range(len(bs.chunk_table)):
        _roundtrip(ChunkInfo, data[start + i * 80 : start + i * 80 + 80])
    for rec in bs.inodes.values():
        assert rec.inode.encode() == data[rec.offset : rec.offset + 64]
        if rec.chunks:
            pos = (rec.offset + 64 + 7) // 8 * 8
            assert b"".join(a.encode() for a in rec.chunks) == data[pos : pos + 8 * len(rec.chunks)]
    blob_raw = (DATA / "v6-separate" / "blobs" / SEP_ID).read_bytes()
    blob = read_blob(blob_raw)
    assert blob.meta_header is not None
    h = blob.meta_header
    ci = blob_raw[h.ci_offset : h.ci_offset + h.ci_uncompressed_size]
    assert b"".join(CiV1.decode(ci[i : i + 16]).encode() for i in range(0, len(ci), 16)) == ci
    hdr_at = h.ci_offset + h.ci_compressed_size
    _roundtrip(BlobMetaHeader, blob_raw[hdr_at : hdr_at + 4096])
    for sec in blob.sections:
        raw_hdr = blob_raw[sec.header_offset : sec.header_offset + 512]
        assert tar_header(sec.name, sec.size) == raw_hdr
        assert decode_tar_header(raw_hdr).size == sec.size
    toc_sec = blob.section(c.TOC_NAME)
    assert toc_sec is not None
    toc_raw = blob_raw[toc_sec.data_offset : toc_sec.header_offset]
    for i in range(0, len(toc_raw), 128):
        _roundtrip(TocEntry, toc_raw[i : i + 128])


def test_chunk_addr_and_ci_bit_layout() -> None:
    addr = ChunkAddr(device_id=3, ci_index=0x12345, blkaddr=77)
    assert addr.encode() == bytes.fromhex("4523") + bytes([3, 1]) + (77).to_bytes(4, "little")
    assert ChunkAddr.decode(addr.encode()) == addr
    ci = CiV1(
        uncompressed_offset=0x1234000,
        uncompressed_size=0x100000,
        compressed_offset=5,
        compressed_size=0xFFFFF,
    )
    assert CiV1.decode(ci.encode()) == ci
    ino = Inode(compact=True, format=0, mode=0o100644, nlink=1, size=5, i_u=7, ino=3, uid=1, gid=2)
    assert Inode.decode(ino.encode()) == ino


def _mutate(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("offset", "value", "what"),
    [
        (1024, b"\0\0\0\0", "magic"),
        (1028, b"\1", "checksum"),
        (1036, b"\x0b", "blkszbits"),
        (1104, b"\x0d", "incompat"),
        (1112, b"\x0c", "devt_slotoff"),
        (1152, (0x194 | 0x1).to_bytes(4, "little"), "two compression flags"),
        (1172, (3000).to_bytes(4, "little"), "chunk size"),
        (1408 + 64, bytes(4), "device blocks"),
        (4096 + 64, b"\x05", "blob_index"),
        (4096 + 84, b"\x00", "ALIGNED"),
        (4096 + 128, b"\x21", "ci size"),
        (4096, b"zz", "blob id length"),
    ],
)
def test_reader_rejects_corrupt_bootstraps(offset: int, value: bytes, what: str) -> None:
    data = (DATA / "v6-separate" / "rafs-v6-2.2.boot").read_bytes()
    bad = _mutate(data, offset, value)
    if what == "blob id length":
        bad = _mutate(data, offset, b"ab" + bytes(62))
    with pytest.raises(FormatError):
        read_bootstrap(bad)


def test_reader_rejects_truncation_and_bad_pointers() -> None:
    data = (DATA / "v6-separate" / "rafs-v6-2.2.boot").read_bytes()
    with pytest.raises(FormatError):
        read_bootstrap(data[:-4096])
    with pytest.raises(FormatError):
        read_bootstrap(data[:5000])
    bs = read_bootstrap(data)
    lib = bs.inode_at(b"/lib.rs")
    # A chunk index pointing to device 2 (there is one blob).
    with pytest.raises(FormatError):
        read_bootstrap(_mutate(data, (lib.offset + 64 + 7) // 8 * 8 + 2, b"\x02"))
    # A root dirent pointing back at the root as a subdirectory (cycle) or at garbage.
    root = bs.inodes[128]
    with pytest.raises(FormatError):
        read_bootstrap(_mutate(data, root.offset + 64 + 24, (128).to_bytes(8, "little")))


def test_blob_reader_detects_corruption() -> None:
    raw = (DATA / "v6-separate" / "blobs" / SEP_ID).read_bytes()
    with pytest.raises(FormatError):
        read_blob(_mutate(raw, 100, b"\xff\xff"))  # chunk data covered by the image.blob ToC digest
    with pytest.raises(FormatError):
        read_blob(raw[:-1])
    with pytest.raises(FormatError):
        read_blob(_mutate(raw, 12954, b"\x00"))  # blob.digest payload
    blob = read_blob(raw, check=False)
    blob.digests = [bytes(32)] * 2
    with pytest.raises(FormatError):
        verify_chunk_digests(blob, "zstd", "blake3")


def test_decompression_is_bounded() -> None:
    blob = read_blob((DATA / "v6-inline-toc" / INLINE_NAME).read_bytes())
    entry = blob.toc_entry(c.ENTRY_BOOTSTRAP)
    assert entry is not None
    entry.uncompressed_size = 100
    with pytest.raises(FormatError):
        blob.bootstrap()


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared fixtures not available")
def test_shared_fixtures_match_copies() -> None:
    for path in DATA.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert (SHARED / path.relative_to(DATA)).read_bytes() == path.read_bytes(), path


def test_bootstrap_only_layer_is_gzip_tar() -> None:
    raw = (DATA / "v6-bootstrap-only" / "v6-bootstrap-chunk-pos-438272.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tf:
        assert tf.getnames() == ["image", "image/image.boot"]
