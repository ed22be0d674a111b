"""Batch chunks (``batch_size``): the blob and bootstrap decoded here with struct and zstandard directly,
against the layout of nydus's ``storage/src/meta/batch.rs``, ``chunk_info_v2.rs`` and ``dump_file_chunk``
(``builder/src/core/node.rs``); and every file read back through our reader."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import struct
from dataclasses import dataclass

import blake3
import lz4.block
import pytest
import zstandard

from accel.errors import FormatError
from accel.formats.nydus import (
    LayerBuild,
    Options,
    build_layer,
    read_blob,
    read_bootstrap,
    read_file,
    validate,
)
from accel.formats.nydus import constants as c
from accel.formats.nydus.blob import BlobMeta, blob_meta_file
from accel.formats.nydus.tail import read_layer_meta
from tests.support.nydus_layers import Item, make_tar

BATCH = 0x10000


def _layer(seed: int = 7) -> tuple[list[Item], dict[str, bytes]]:
    """Many small files (text and random), some big and middling ones between them, a duplicate, a
    hardlink and empty files, so batches are cut both by size and by a chunk that is not batched."""
    rnd = random.Random(seed)
    items = [Item("./", "dir"), Item("d/", "dir")]
    files: dict[str, bytes] = {}

    def add(name: str, data: bytes) -> None:
        items.append(Item(name, data=data))
        files["/" + name] = data

    for i in range(400):
        if i % 3 == 0:
            data = b"small text file %d\n" % i * rnd.randrange(1, 600)
        else:
            data = rnd.randbytes(rnd.randrange(1, 9000))
        add(f"d/s{i:03}", data)
        if i in (50, 200):
            add(f"d/big{i}", rnd.randbytes(3 * 1024 * 1024 + 17))
        if i in (120, 300):
            add(f"d/mid{i}", rnd.randbytes(BATCH // 2))  # not below half the batch size: never batched
        if i == 250:
            add("d/just-below-half", b"x" * (BATCH // 2 - 1))
    add("d/empty", b"")
    add("d/dup-of-s001", files["/d/s001"])
    items.append(Item("d/hard", "hardlink", target="d/s002"))
    files["/d/hard"] = files["/d/s002"]
    return items, files


@dataclass
class Built:
    files: dict[str, bytes]
    items: list[Item]
    res: LayerBuild
    raw: bytes


def _build(opts: Options, seed: int = 7) -> Built:
    items, files = _layer(seed)
    out = io.BytesIO()
    res = build_layer(io.BytesIO(make_tar(items)), out, opts)
    return Built(files, items, res, out.getvalue())


@pytest.fixture(scope="module")
def zstd_batch() -> Built:
    return _build(Options(batch_size=BATCH))


# --- an independent decode of the blob meta ------------------------------------------------------------


@dataclass
class Ci:
    u_off: int
    u_size: int
    c_off: int
    c_size: int
    flags: int
    data: int


def _decode_meta(blob_meta: bytes) -> tuple[dict[str, int], list[Ci], list[tuple[int, int, bytes]]]:
    """``image/<hex>.blob.meta``: the uncompressed ci data padded to 4 KiB, then the 4096-byte header."""
    head = blob_meta[-4096:]
    magic, features, ci_comp, entries, ci_off, ci_csize, ci_usize, t_off, t_size, t_count = (
        struct.unpack_from("<IIIIQQQQQI", head)
    )
    assert magic == struct.unpack_from("<I", head, 4092)[0] == 0xB10BB10B
    header = dict(
        features=features,
        ci_compressor=ci_comp,
        entries=entries,
        ci_offset=ci_off,
        ci_compressed_size=ci_csize,
        ci_uncompressed_size=ci_usize,
        table_offset=t_off,
        table_size=t_size,
        table_count=t_count,
    )
    body = blob_meta[:-4096]
    cis = []
    for i in range(entries):
        uncomp, comp, data = struct.unpack_from("<QQQ", body, 24 * i)
        cis.append(
            Ci(
                u_off=(uncomp & 0xFFFF_FFFF) << 12,
                u_size=((uncomp >> 32) & 0xFF_FFFF) + 1,
                c_off=comp & (1 << 40) - 1,
                c_size=comp >> 40,
                flags=uncomp >> 56,
                data=data,
            )
        )
    table = [struct.unpack_from("<II32s", body, t_off + 40 * i) for i in range(t_count)]
    return header, cis, table


def _decompress(compressor: str, data: bytes, size: int, compressed: bool) -> bytes:
    if not compressed:
        return data
    if compressor == "zstd":
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    assert compressor == "lz4_block"
    return bytes(lz4.block.decompress(data, uncompressed_size=size))


def _chunk_bytes(
    built: Built, cis: list[Ci], table: list[tuple[int, int, bytes]], compressor: str
) -> list[bytes]:
    out = []
    for ci in cis:
        if ci.flags & 0x04:
            c_size, u_size, _ = table[ci.data >> 32]
            unit = _decompress(compressor, built.raw[ci.c_off : ci.c_off + c_size], u_size, c_size != u_size)
            assert len(unit) == u_size
            off = ci.data & 0xFFFF_FFFF
            out.append(unit[off : off + ci.u_size])
        else:
            stored = built.raw[ci.c_off : ci.c_off + ci.c_size]
            out.append(_decompress(compressor, stored, ci.u_size, bool(ci.flags & 0x01)))
    return out


def _tar_order_chunks(built: Built, chunk_size: int = c.DEFAULT_CHUNK_SIZE) -> list[tuple[bytes, bool]]:
    """(data, eligible for a batch) of each new chunk in tar order, duplicates dropped: nydus's rule is a
    file of exactly one chunk, shorter than half the batch size."""
    seen: set[bytes] = set()
    out = []
    for it in built.items:
        if it.kind != "reg" or not it.data:
            continue
        pieces = [it.data[i : i + chunk_size] for i in range(0, len(it.data), chunk_size)]
        for piece in pieces:
            key = blake3.blake3(piece).digest()
            if key in seen:
                continue
            seen.add(key)
            out.append((piece, len(pieces) == 1 and len(piece) < BATCH // 2))
    return out


def test_ci_v2_and_batch_table_follow_the_spec(zstd_batch: Built) -> None:
    header, cis, table = _decode_meta(zstd_batch.res.blob_meta)
    n, k = len(cis), len(table)
    assert header["features"] & 0x80 and header["features"] & 0x04  # BATCH, CHUNK_INFO_V2
    assert header["table_offset"] == 24 * n and header["table_size"] == 40 * k
    assert header["ci_uncompressed_size"] == 24 * n + 40 * k
    assert all(reserved == bytes(32) for _, _, reserved in table)
    expected = _tar_order_chunks(zstd_batch)
    assert n == len(expected) == zstd_batch.res.chunk_count
    # Every chunk is what the tar holds, in tar order, and batched exactly when the rule says.
    got = _chunk_bytes(zstd_batch, cis, table, "zstd")
    assert got == [data for data, _ in expected]
    assert [bool(ci.flags & 0x04) for ci in cis] == [eligible for _, eligible in expected]
    assert 10 < k < n and sum(1 for _, e in expected if e) > 300
    u_next = 0
    units: dict[int, list[Ci]] = {}
    for ci in cis:
        assert ci.u_off == u_next  # each chunk keeps its own 4K-aligned uncompressed range
        u_next += -(-ci.u_size // 4096) * 4096
        if ci.flags & 0x04:
            assert ci.flags == 0x05 and ci.c_size == 0  # COMPRESSED|BATCH, size only in the table
            units.setdefault(ci.data >> 32, []).append(ci)
        else:
            assert ci.data == 0 and ci.flags in (0, 1)
    assert sorted(units) == list(range(k))
    for index, members in units.items():
        _, u_size, _ = table[index]
        assert len({m.c_off for m in members}) == 1
        offsets = [m.data & 0xFFFF_FFFF for m in members]
        assert offsets == [sum(m.u_size for m in members[:j]) for j in range(len(members))]
        assert u_size == sum(m.u_size for m in members) < BATCH
    # The compressed stream is units and lone chunks back to back, in order, with no gap.
    pieces = sorted({(ci.c_off, table[ci.data >> 32][0] if ci.flags & 0x04 else ci.c_size) for ci in cis})
    pos = 0
    for off, size in pieces:
        assert off == pos
        pos += size
    blob = read_blob(zstd_batch.raw)
    image_blob = blob.section(c.ENTRY_BLOB)
    assert image_blob is not None and pos == image_blob.size


def test_a_batch_is_cut_where_the_next_chunk_would_fill_it(zstd_batch: Built) -> None:
    """A unit ends when adding the next eligible chunk would bring it to the batch size, or when a chunk
    that is not batched is written."""
    _, cis, table = _decode_meta(zstd_batch.res.blob_meta)
    for prev, nxt in itertools.pairwise(cis):
        if prev.flags & 0x04 and nxt.flags & 0x04 and prev.data >> 32 != nxt.data >> 32:
            assert table[prev.data >> 32][1] + nxt.u_size >= BATCH
        if prev.flags & 0x04 and nxt.flags & 0x04 and prev.data >> 32 == nxt.data >> 32:
            assert nxt.c_off == prev.c_off
        if prev.flags & 0x04 and not nxt.flags & 0x04:
            assert nxt.c_off == prev.c_off + table[prev.data >> 32][0]
        if not prev.flags & 0x04 and nxt.flags & 0x04:
            # A lone chunk closed the open unit: the next batched chunk opens one right after it.
            assert nxt.data & 0xFFFF_FFFF == 0 and nxt.c_off == prev.c_off + prev.c_size


def test_blob_table_and_chunk_table_as_nydus_writes_them(zstd_batch: Built) -> None:
    header, cis, _ = _decode_meta(zstd_batch.res.blob_meta)
    boot = zstd_batch.res.bootstrap
    ext_blob_off, ext_blob_size = struct.unpack_from("<QI", boot, 1152 + 8)
    chunk_off, chunk_size = struct.unpack_from("<QQ", boot, 1152 + 8 + 8 + 4 + 4)
    assert ext_blob_size == 256
    entry = boot[ext_blob_off : ext_blob_off + 256]
    features = struct.unpack_from("<I", entry, 84)[0]
    ci_comp, ci_off, ci_csize, ci_usize = struct.unpack_from("<IQQQ", entry, 108)
    assert features == header["features"] == 0x700000A7
    assert (ci_comp, ci_off, ci_csize, ci_usize) == (
        header["ci_compressor"],
        header["ci_offset"],
        header["ci_compressed_size"],
        header["ci_uncompressed_size"],
    )
    batched = {i for i, ci in enumerate(cis) if ci.flags & 0x04}
    rows = [struct.unpack_from("<32sIIIIQQQII", boot, chunk_off + 80 * i) for i in range(chunk_size // 80)]
    assert len(rows) == len(cis)
    for _digest, _blob_index, flags, c_size, u_size, c_off, u_off, _file_off, index, _crc in rows:
        ci = cis[index]
        assert (u_off, u_size) == (ci.u_off, ci.u_size)
        if index in batched:
            # nydus never fills in a batched chunk's compressed fields: only the blob meta locates it.
            assert (flags, c_size, c_off) == (0, 0, 0)
        else:
            assert (c_off, c_size, flags & c.CHUNK_COMPRESSED) == (ci.c_off, ci.c_size, ci.flags & 0x01)
    # The ToC's blob.meta digest covers the ci array and the table, as nydus hashes them.
    blob = read_blob(zstd_batch.raw)
    meta_entry = blob.toc_entry(c.ENTRY_META)
    assert meta_entry is not None
    raw_meta = zstd_batch.res.blob_meta[: header["ci_uncompressed_size"]]
    assert meta_entry.uncompressed_digest == hashlib.sha256(raw_meta).digest()


def test_blob_meta_found_through_the_toc_and_the_tail_equals_the_builders(zstd_batch: Built) -> None:
    """What the merge and the layer cache recover from a blob carries the batch table too."""
    raw = zstd_batch.raw
    assert blob_meta_file(raw) == zstd_batch.res.blob_meta
    bootstrap, blob_meta = read_layer_meta(lambda off, n: raw[off : off + n], len(raw))
    assert (bootstrap, blob_meta) == (zstd_batch.res.bootstrap, zstd_batch.res.blob_meta)


# --- read back ----------------------------------------------------------------------------------------


def test_every_file_reads_back_through_bootstrap_and_ranged_reads(zstd_batch: Built) -> None:
    bs = read_bootstrap(zstd_batch.res.bootstrap)
    reads: list[tuple[int, int]] = []

    def read_range(blob_index: int, offset: int, length: int) -> bytes:
        assert blob_index == 0
        reads.append((offset, length))
        return zstd_batch.raw[offset : offset + length]

    metas: dict[int, BlobMeta] = {}
    for path, data in zstd_batch.files.items():
        assert read_file(bs, path, read_range, metas) == data, path
    header, _, _ = _decode_meta(zstd_batch.res.blob_meta)
    meta_read = (header["ci_offset"], header["ci_compressed_size"] + 4096)
    assert reads.count(meta_read) == 1  # fetched once, then kept in ``metas``


def test_blob_reader_and_validate_accept_batch_blobs(zstd_batch: Built) -> None:
    blob = read_blob(zstd_batch.raw)
    bs = validate(zstd_batch.res.bootstrap, {c.PLACEHOLDER_BLOB_ID: blob})
    device = blob.device_image(bs.compressor, bs.devices[0].blocks * 4096)
    for rec_path, nid in bs.entries:
        rec = bs.inodes[nid]
        want = zstd_batch.files.get(rec_path.decode())
        if want is None:
            continue
        cs = c.DEFAULT_CHUNK_SIZE
        got = b"".join(
            device[addr.blkaddr * 4096 : addr.blkaddr * 4096 + min(cs, len(want) - i * cs)]
            for i, addr in enumerate(rec.chunks)
        )
        assert got == want, rec_path


def test_a_damaged_batch_is_refused(zstd_batch: Built) -> None:
    _, cis, table = _decode_meta(zstd_batch.res.blob_meta)
    bs = read_bootstrap(zstd_batch.res.bootstrap)
    ci = cis[bs.inode_at(b"/d/s001").chunks[0].ci_index]
    assert ci.flags & 0x04
    broken = bytearray(zstd_batch.raw)
    broken[ci.c_off + table[ci.data >> 32][0] // 2] ^= 0x55
    # zstd frames carry no checksum here: the chunk digests catch the damage in whichever file it hit.
    unit = ci.data >> 32
    members = [
        path
        for path in zstd_batch.files
        if (rec := bs.inode_at(path.encode())).chunks
        and cis[rec.chunks[0].ci_index].flags & 0x04
        and cis[rec.chunks[0].ci_index].data >> 32 == unit
    ]
    failed = []
    for path in members:
        try:
            read_file(bs, path, lambda _b, off, n: bytes(broken[off : off + n]))
        except FormatError as exc:
            failed.append((path, exc.reason))
    assert failed and all("digest" in reason or "corrupt" in reason for _, reason in failed)
    assert read_file(bs, "/d/s001", lambda _b, off, n: zstd_batch.raw[off : off + n])


@pytest.mark.parametrize("compressor", ["lz4_block", "none"])
def test_other_compressors(compressor: str) -> None:
    built = _build(Options(batch_size=BATCH, compressor=compressor, digester="sha256"), seed=11)
    header, cis, table = _decode_meta(built.res.blob_meta)
    assert header["features"] & 0x84 == 0x84 and table
    if compressor == "none":
        assert all(c_size == u_size for c_size, u_size, _ in table)  # stored raw: the sizes agree
    else:
        assert any(c_size < u_size for c_size, u_size, _ in table)
    assert _chunk_bytes(built, cis, table, compressor) == [d for d, _ in _tar_order_chunks(built)]
    bs = read_bootstrap(built.res.bootstrap)
    for path, data in built.files.items():
        assert read_file(bs, path, lambda _b, off, n: built.raw[off : off + n]) == data


def test_incompressible_batches_are_stored_raw() -> None:
    rnd = random.Random(5)
    items = [Item("./", "dir")] + [Item(f"r{i}", data=rnd.randbytes(3000)) for i in range(60)]
    out = io.BytesIO()
    res = build_layer(io.BytesIO(make_tar(items)), out, Options(batch_size=0x4000))
    _, cis, table = _decode_meta(res.blob_meta)
    assert table and all(c_size == u_size for c_size, u_size, _ in table)
    raw = out.getvalue()
    bs = read_bootstrap(res.bootstrap)
    for it in items[1:]:
        assert read_file(bs, it.name, lambda _b, off, n: raw[off : off + n]) == it.data
    assert len(cis) == 60


# --- options ------------------------------------------------------------------------------------------


def test_batch_size_zero_is_todays_output() -> None:
    items, _ = _layer(3)
    tar = make_tar(items)
    a, b = io.BytesIO(), io.BytesIO()
    build_layer(io.BytesIO(tar), a, Options())
    build_layer(io.BytesIO(tar), b, Options(batch_size=0))
    assert a.getvalue() == b.getvalue()
    assert not read_blob(a.getvalue()).meta_header.features & 0x84  # type: ignore[union-attr]


def test_features_are_set_even_when_nothing_is_batched() -> None:
    """nydus sets BATCH|CHUNK_INFO_V2 for the blob whenever a batch size is given."""
    items = [Item("./", "dir"), Item("big", data=random.Random(1).randbytes(3 << 20))]
    out = io.BytesIO()
    res = build_layer(io.BytesIO(make_tar(items)), out, Options(batch_size=0x1000))
    header, cis, table = _decode_meta(res.blob_meta)
    assert header["features"] & 0x84 == 0x84 and not table and header["table_offset"] == 24 * len(cis)
    assert (
        read_file(read_bootstrap(res.bootstrap), "big", lambda _b, o, n: out.getvalue()[o : o + n])
        == items[1].data
    )


@pytest.mark.parametrize(
    ("batch_size", "chunk_size", "message"),
    [
        (0x3000, c.DEFAULT_CHUNK_SIZE, "power of two"),
        (0x800, c.DEFAULT_CHUNK_SIZE, "power of two"),
        (0x2000000, 0x1000000, "power of two"),
        (0x200000, c.DEFAULT_CHUNK_SIZE, "bigger than chunk size"),
    ],
)
def test_batch_size_validated_as_nydus_image_does(batch_size: int, chunk_size: int, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Options(batch_size=batch_size, chunk_size=chunk_size).check()


def test_accepted_batch_sizes() -> None:
    Options(batch_size=0x1000).check()
    Options(batch_size=c.DEFAULT_CHUNK_SIZE).check()
    Options(batch_size=0x1000000, chunk_size=0x1000000).check()
