"""Merging per-layer bootstraps: OCI whiteouts, replaced directories, blob table order."""

from __future__ import annotations

import io
from typing import Any

import pytest

from accel.errors import FormatError
from accel.formats.nydus import Options, build_layer, file_tree, merge, read_blob, read_bootstrap, validate
from accel.formats.nydus import constants as c
from accel.formats.nydus.blob import BlobFile
from tests.support.nydus_layers import Item, make_tar
from tests.support.oci_apply import apply_layers, as_tree

LAYERS = [
    [
        Item("./", "dir", mode=0o755, mtime=100),
        Item("a/", "dir", mode=0o755, mtime=100),
        Item("a/x", data=b"x0" * 1000),
        Item("a/y", data=b"y0"),
        Item("b/", "dir", mtime=100, mode=0o755),
        Item("b/sub/", "dir", mode=0o755),
        Item("b/sub/f", data=b"f0"),
        Item("b/keep", data=b"k0"),
        Item("c", data=b"c was a file"),
        Item("d/", "dir", mode=0o755),
        Item("d/inner", data=b"d inner"),
        Item("h/", "dir", mode=0o755),
        Item("h/orig", data=b"hard" * 100),
        Item("h/link", "hardlink", target="h/orig"),
        Item("z-gone-later", data=b"z"),
    ],
    [
        Item("./", "dir", mode=0o750, mtime=200),
        Item("a/", "dir", mode=0o700, mtime=200, uid=7),
        Item("a/.wh.x"),
        Item("a/new", data=b"new in 1"),
        Item("b/", "dir", mode=0o755, mtime=200),
        Item("b/.wh..wh..opq"),
        Item("b/fresh", data=b"fresh"),
        Item("c/", "dir", mode=0o755),
        Item("c/inside", data=b"c is now a dir"),
        Item("d", data=b"d is now a file"),
        Item("e/", "dir", mode=0o755),
        Item("e/.wh.ghost"),
        Item("e/file", data=b"only layer 1 data"),
    ],
    [
        Item("./", "dir", mode=0o755, mtime=300),
        Item("meta/", "dir", mode=0o755),
        Item("meta/link", "symlink", target="../a/new", mode=0o777),
        Item(".wh.z-gone-later"),
    ],
    [
        Item("./", "dir", mode=0o755, mtime=400),
        Item("0first", data=b"layer 3 data comes first in the walk"),
        Item("e/", "dir", mode=0o755),
        Item("e/.wh.file"),
        Item("a/", "dir", mode=0o700, mtime=200, uid=7),
        Item("a/.wh.new"),
    ],
]


def _build_all(layers: list[list[Item]]) -> tuple[list[bytes], list[tuple[bytes, str]], dict[str, BlobFile]]:
    tars = [make_tar(items) for items in layers]
    inputs: list[tuple[bytes, str]] = []
    blobs: dict[str, BlobFile] = {}
    for tar in tars:
        out = io.BytesIO()
        res = build_layer(io.BytesIO(tar), out, Options())
        inputs.append((res.bootstrap, res.blob_id))
        blobs[res.blob_id] = read_blob(out.getvalue())
    return tars, inputs, blobs


def _tree(boot: bytes, blobs: dict[str, BlobFile]) -> list[dict[str, Any]]:
    bs = validate(boot, blobs)
    devices = [blobs[b.blob_id].device_image(bs.compressor, b.uncompressed_size) for b in bs.blobs]
    out = file_tree(bs, devices)
    for item in out:
        for key in ("nlink", "hardlink_group", "rdev", "mtime_nsec"):
            item.pop(key, None)
    return out


def test_merge_equals_oci_layer_apply() -> None:
    tars, inputs, blobs = _build_all(LAYERS)
    boot = merge(inputs)
    assert _tree(boot, blobs) == as_tree(apply_layers(tars))
    tree = {e["path"]: e for e in _tree(boot, blobs)}
    assert not any("/.wh." in p for p in tree)
    assert (tree["/a"]["mode"], tree["/a"]["uid"]) == ("0700", 7)  # upper dir metadata replaces lower
    assert tree["/"]["mtime"] == 400
    assert "/b/keep" not in tree and "/b/fresh" in tree
    assert tree["/c"]["type"] == "dir" and tree["/d"]["type"] == "reg"


def test_merged_blob_table() -> None:
    _, inputs, _ = _build_all(LAYERS)
    bs = read_bootstrap(merge(inputs))
    ids = [b.blob_id for b in bs.blobs]
    # First reference in the walk: /0first (layer 3), /d (layer 1), /a/y (layer 0); layer 2 has no data.
    assert ids == [inputs[3][1], inputs[1][1], inputs[0][1]]
    assert [b.blob_index for b in bs.blobs] == [0, 1, 2]
    assert [d.blob_id for d in bs.devices] == ids
    for b in bs.blobs:
        assert b.features == 0x70000021
        assert b.blob_toc_size == 0
    assert bs.ext.flags & c.SF_HAS_XATTR and bs.prefetch == [c.ROOT_NID]
    first = bs.inode_at(b"/0first").chunks[0]
    assert first.device_id == 1
    assert bs.inode_at(b"/d").chunks[0].device_id == 2
    assert bs.inode_at(b"/a/y").chunks[0].device_id == 3
    assert {ch.blob_index for ch in bs.chunk_table} == {0, 1, 2}
    nids = dict(bs.entries)
    assert nids[b"/h/orig"] == nids[b"/h/link"] and bs.inodes[nids[b"/h/orig"]].inode.nlink == 2


def test_unreferenced_blobs_vanish() -> None:
    layers = [
        [Item("./", "dir", mode=0o755), Item("old", data=b"old data")],
        [Item("./", "dir", mode=0o755), Item(".wh.old"), Item("new", data=b"new data")],
    ]
    _, inputs, _ = _build_all(layers)
    bs = read_bootstrap(merge(inputs))
    assert [b.blob_id for b in bs.blobs] == [inputs[1][1]]
    assert bs.chunk_table[0].blob_index == 0


def test_single_layer_merge_keeps_tree_and_renames_blob() -> None:
    tars, inputs, blobs = _build_all(LAYERS[:1])
    boot = merge(inputs)
    assert _tree(boot, blobs) == as_tree(apply_layers(tars))
    assert read_bootstrap(boot).blobs[0].blob_id == inputs[0][1]


def test_lowest_layer_whiteouts_are_kept_as_files() -> None:
    _, inputs, blobs = _build_all([[Item("./", "dir", mode=0o755), Item(".wh.foo"), Item("x", data=b"1")]])
    paths = [e["path"] for e in _tree(merge(inputs), blobs)]
    assert "/.wh.foo" in paths


def test_merge_rejects_mismatched_chunk_sizes() -> None:
    a = io.BytesIO()
    b = io.BytesIO()
    ra = build_layer(io.BytesIO(make_tar([Item("a", data=b"1")])), a, Options())
    rb = build_layer(io.BytesIO(make_tar([Item("b", data=b"2")])), b, Options(chunk_size=0x10000))
    with pytest.raises(FormatError):
        merge([(ra.bootstrap, ra.blob_id), (rb.bootstrap, rb.blob_id)])
    with pytest.raises(FormatError):
        merge([])
