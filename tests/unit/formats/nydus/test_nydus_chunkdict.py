"""Chunk dictionaries: reading one from an image bootstrap, building a layer that references its chunks,
merging such layers with the dictionary's blobs kept."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest

from accel.errors import FormatError
from accel.formats.layercodec import gzip_compress
from accel.formats.nydus import (
    ChunkDict,
    Options,
    bootstrap_from_layer_at,
    bootstrap_layer_tar,
    build_layer,
    file_tree,
    merge,
    read_blob,
    read_bootstrap,
    read_chunk_dict,
    validate,
)
from accel.formats.nydus import constants as c
from accel.formats.nydus.blob import BlobFile
from accel.formats.nydus.chunkcodec import digest_of
from tests.support.nydus_layers import Item, make_tar
from tests.support.oci_apply import apply_layers, as_tree

CS = 0x10000  # small chunks: several per file, so files share some chunks and not others
OPTS = Options(chunk_size=CS)
SHARED = bytes(range(256)) * (3 * CS // 256)  # three whole chunks
OTHER = hashlib.sha256(b"seed").digest() * (CS // 32)


def _pseudo(seed: bytes, n: int) -> bytes:
    out = bytearray()
    block = seed
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


DICT_LAYERS = [
    [Item("./", "dir", mode=0o755), Item("lib/", "dir", mode=0o755), Item("lib/shared", data=SHARED)],
    [Item("./", "dir", mode=0o755), Item("etc/", "dir", mode=0o755), Item("etc/other", data=OTHER)],
]


def _build(items: list[Item], **kw: Any) -> tuple[Any, BlobFile, bytes]:
    tar = make_tar(items)
    out = io.BytesIO()
    res = build_layer(io.BytesIO(tar), out, OPTS, **kw)
    return res, read_blob(out.getvalue()), tar


def _dictionary() -> tuple[bytes, dict[str, BlobFile]]:
    """A two-layer "image" whose merged bootstrap serves as the dictionary."""
    inputs, blobs = [], {}
    for items in DICT_LAYERS:
        res, blob, _ = _build(items)
        inputs.append((res.bootstrap, res.blob_id))
        blobs[res.blob_id] = blob
    return merge(inputs), blobs


def test_read_chunk_dict_lists_every_chunk_by_digest() -> None:
    boot, blobs = _dictionary()
    cd = read_chunk_dict(boot)
    bs = read_bootstrap(boot)
    assert [b.blob_id for b in cd.blobs] == [b.blob_id for b in bs.blobs]
    assert all(not b.features & c.BF_INLINED_FS_META for b in cd.blobs)
    assert (cd.digester, cd.chunk_size) == ("blake3", CS)
    # SHARED's three chunks are equal (a repeating pattern): the dictionary holds one chunk per digest.
    piece = digest_of("blake3", SHARED[:CS])
    found = cd.lookup(piece, CS)
    assert found is not None and cd.lookup(piece, CS - 1) is None
    assert cd.lookup(digest_of("blake3", b"absent"), 6) is None
    assert len(cd.chunks) == len({ch.digest for ch in bs.chunk_table}) == 2
    blob_id = cd.blobs[found.blob_index].blob_id
    assert blobs[blob_id].chunks[found.ci_index].uncompressed_size == CS


def test_build_with_dict_writes_only_new_chunks_and_reads_back() -> None:
    boot, dict_blobs = _dictionary()
    cd = read_chunk_dict(boot)
    fresh = _pseudo(b"fresh", 2 * CS + 100)
    items = [
        Item("./", "dir", mode=0o755),
        Item("app/", "dir", mode=0o755),
        Item("app/copy-of-shared", data=SHARED),
        Item("app/mixed", data=OTHER + fresh),
    ]
    res, blob, tar = _build(items, chunk_dict=cd)
    # OTHER and SHARED come from the dictionary; only fresh's three chunks are written.
    assert res.chunk_count == 3 == len(blob.chunks)
    assert (res.dict_chunks, res.dict_bytes) == (2, 2 * CS)
    bs = read_bootstrap(res.bootstrap)
    ids = [b.blob_id for b in bs.blobs]
    assert ids[0] == c.PLACEHOLDER_BLOB_ID and ids[1:] == list(res.dict_blob_ids)
    assert set(res.dict_blob_ids) == {b.blob_id for b in cd.blobs}
    # The dict blobs come after the layer's own, in order of first reference (copy-of-shared first).
    assert res.dict_blob_ids[0] == _blob_of(cd, SHARED)
    assert [d.blob_id for d in bs.devices] == ids
    # Read back through all three blobs, the tree equals the tar.
    merged = merge([(res.bootstrap, res.blob_id)], chunk_dict_blobs=cd.blob_ids)
    assert _tree(merged, {res.blob_id: blob, **dict_blobs}) == as_tree(apply_layers([tar]))


def test_layer_made_only_of_dict_chunks_has_no_blob_of_its_own() -> None:
    boot, dict_blobs = _dictionary()
    cd = read_chunk_dict(boot)
    items = [Item("./", "dir", mode=0o755), Item("again", data=OTHER)]
    res, blob, tar = _build(items, chunk_dict=cd)
    assert res.chunk_count == 0 and res.blob_entry is None and not blob.chunks
    bs = read_bootstrap(res.bootstrap)
    assert [b.blob_id for b in bs.blobs] == list(res.dict_blob_ids) and len(bs.blobs) == 1
    assert [b.blob_index for b in bs.blobs] == [0]
    merged = merge([(res.bootstrap, res.blob_id)], chunk_dict_blobs=cd.blob_ids)
    assert [b.blob_id for b in read_bootstrap(merged).blobs] == list(res.dict_blob_ids)
    assert _tree(merged, dict_blobs) == as_tree(apply_layers([tar]))


def test_merge_lists_dict_blobs_once_in_first_reference_order() -> None:
    boot, dict_blobs = _dictionary()
    cd = read_chunk_dict(boot)
    layers = [
        [Item("./", "dir", mode=0o755), Item("b-other", data=OTHER), Item("a-new", data=b"new 0")],
        [Item("./", "dir", mode=0o755), Item("c-shared", data=SHARED), Item("d-other", data=OTHER)],
    ]
    inputs, blobs, tars = [], dict(dict_blobs), []
    for items in layers:
        res, blob, tar = _build(items, chunk_dict=cd)
        inputs.append((res.bootstrap, res.blob_id))
        blobs[res.blob_id] = blob
        tars.append(tar)
    merged = merge(inputs, chunk_dict_blobs=cd.blob_ids)
    bs = read_bootstrap(merged)
    ids = [b.blob_id for b in bs.blobs]
    other_blob = _blob_of(cd, OTHER)
    shared_blob = _blob_of(cd, SHARED)
    # Walk order: /a-new (layer 0's own blob), /b-other (dict), /c-shared (dict); layer 1 writes nothing.
    assert ids == [inputs[0][1], other_blob, shared_blob]
    assert len(set(ids)) == len(ids) and [d.blob_id for d in bs.devices] == ids
    assert _tree(merged, blobs) == as_tree(apply_layers(tars))


def test_incompatible_dictionary_is_refused() -> None:
    cd = read_chunk_dict(_dictionary()[0])
    with pytest.raises(FormatError, match="chunk"):
        build_layer(io.BytesIO(make_tar([Item("a", data=b"1")])), io.BytesIO(), Options(), chunk_dict=cd)
    with pytest.raises(FormatError, match="sha256"):
        build_layer(
            io.BytesIO(make_tar([Item("a", data=b"1")])),
            io.BytesIO(),
            Options(chunk_size=CS, digester="sha256"),
            chunk_dict=cd,
        )


def test_bootstrap_from_layer_at_reads_by_ranges_and_checks_the_digest() -> None:
    boot, _ = _dictionary()
    layer = gzip_compress(bootstrap_layer_tar(boot, [("ab" * 32, b"meta" * 3000)]))
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return layer[offset : offset + length]

    assert bootstrap_from_layer_at(read_at, len(layer), digest) == boot
    assert reads and all(0 <= o < len(layer) for o, _ in reads)
    with pytest.raises(FormatError, match="digest"):
        bootstrap_from_layer_at(read_at, len(layer), "sha256:" + "0" * 64)


def _blob_of(cd: ChunkDict, data: bytes) -> str:
    """The id of the dictionary blob holding ``data``'s first chunk."""
    found = cd.lookup(digest_of("blake3", data[:CS]), CS)
    assert found is not None
    return cd.blobs[found.blob_index].blob_id


def _tree(boot: bytes, blobs: dict[str, BlobFile]) -> list[dict[str, Any]]:
    bs = validate(boot, blobs)
    devices = [blobs[b.blob_id].device_image(bs.compressor, b.uncompressed_size) for b in bs.blobs]
    out = file_tree(bs, devices)
    for item in out:
        for key in ("nlink", "hardlink_group", "rdev", "mtime_nsec"):
            item.pop(key, None)
    return out
