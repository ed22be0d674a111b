"""The ``nydus`` driver with ``fs_version: "5"`` end to end: convert into a real registry, pull the result and
read every file back through the merged RAFS v5 bootstrap and the layer blobs.

RAFS v5 is not EROFS, so no erofs-utils or kernel mount here: the image is read with the project's v5 reader
and compared with the OCI layer-apply model, as the v6 tests do with fsck.erofs and the kernel.
"""

from __future__ import annotations

import hashlib
import stat
from typing import Any

import pytest

from accel.converter import Converter
from accel.formats.nydus import constants as c
from accel.formats.nydus.reader_v5 import read_bootstrap_v5
from accel.formats.nydus.tail import read_layer_meta
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from tests.interop.nydus.erofs_tools import drop
from tests.interop.nydus.test_nydus_image import (
    FS_VERSION,
    NYDUS_BOOT_TAR,
    Pulled,
    _check_xattrs_and_links,
    _model,
    _pull,
    _tar_files,
)
from tests.support.configs import make_config
from tests.support.images import BuiltImage, build_rich_image, push_layout
from tests.support.nydus_v5 import file_data
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.interop]


def _convert(
    registry: RegistryServer, tmp: Any, name: str, options: dict[str, str]
) -> tuple[BuiltImage, Pulled, str]:
    image = build_rich_image(tmp / "src")
    source = f"{registry.host}/nydus-v5/{name}:v1"
    source_digest = push_layout(image.layout, source, format=None, tls_verify=False)
    config = make_config(
        tmp / "work",
        {registry.host: registry.source()},
        driver="nydus",
        driver_config=options,
        tag_suffix="-nydus",
    )
    with Converter(config) as converter:
        result = converter.convert(source)
    assert result.source_digest == source_digest
    return image, _pull(registry, result.target), source_digest


@pytest.fixture(scope="module")
def v5(registry_plain: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltImage, Pulled]:
    image, pulled, _ = _convert(registry_plain, tmp_path_factory.mktemp("v5"), "rich", {"fs_version": "5"})
    return image, pulled


def _snapshot(bootstrap: bytes, blobs: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """The image through the v5 bootstrap, shaped as ``erofs_tools.snapshot(links=True, xattrs=True)``."""
    bs = read_bootstrap_v5(bootstrap)
    out: dict[str, dict[str, Any]] = {}
    first_name: dict[int, str] = {}
    for raw_path, index in bs.entries:
        rec = bs.inodes[index]
        path = raw_path.decode("utf-8", "surrogateescape")
        item: dict[str, Any] = {"fmt": stat.S_IFMT(rec.mode), "mode": stat.S_IMODE(rec.mode)}
        item.update(uid=rec.uid, gid=rec.gid)
        if stat.S_ISREG(rec.mode):
            item["size"] = rec.size
            item["sha256"] = hashlib.sha256(file_data(bs, rec, blobs)).hexdigest()
            item["link"] = first_name.setdefault(rec.ino, path)
        if stat.S_ISLNK(rec.mode):
            assert rec.symlink is not None
            item["target"] = rec.symlink.decode("utf-8", "surrogateescape")
        else:
            item["mtime"] = rec.mtime
        if stat.S_ISCHR(rec.mode) or stat.S_ISBLK(rec.mode):
            major = (rec.rdev >> 8) & 0xFFF
            minor = (rec.rdev & 0xFF) | ((rec.rdev >> 12) & 0xFFF00)
            item["rdev"] = (major, minor)
        if not stat.S_ISLNK(rec.mode):
            item["xattrs"] = {k.decode(): v for k, v in rec.xattrs.items()}
        out[path] = item
    return out


def _blobs(pulled: Pulled) -> dict[str, bytes]:
    return {
        layer["digest"].split(":", 1)[1]: pulled.blobs[layer["digest"]]
        for layer in pulled.manifest["layers"][:-1]
    }


def test_v5_image_reads_back_as_the_oci_layers(v5: tuple[BuiltImage, Pulled]) -> None:
    image, pulled = v5
    files = _tar_files(pulled.bootstrap_tar)
    # Upstream packs a v5 bootstrap layer without blob.meta files: v5 blobs have none.
    assert set(files) == {NYDUS_BOOT_TAR}
    got = _snapshot(files[NYDUS_BOOT_TAR], _blobs(pulled))
    want = _model(image)
    plain = drop(got, "xattrs", "link")
    # Set-id bits included: no extraction tool in between to drop them.
    assert drop(plain, "mtime") == drop(want, "mtime")
    # The root's mtime is the merge's (the topmost layer's root entry), as in the v6 tests.
    assert {p: d.get("mtime") for p, d in plain.items() if p != "/"} == {
        p: d.get("mtime") for p, d in want.items() if p != "/"
    }
    _check_xattrs_and_links(image, got)


def test_v5_layers_and_annotations(v5: tuple[BuiltImage, Pulled]) -> None:
    image, pulled = v5
    layers = pulled.manifest["layers"]
    assert len(layers) == len(image.images[0].layers) + 1
    assert all(layer["mediaType"] == mt.NYDUS_BLOB for layer in layers[:-1])
    boot = layers[-1]
    assert boot["annotations"] == {keys.NYDUS_BOOTSTRAP: "true", FS_VERSION: "5"}
    assert pulled.manifest["annotations"][FS_VERSION] == "5"
    merged = read_bootstrap_v5(_tar_files(pulled.bootstrap_tar)[NYDUS_BOOT_TAR])
    blobs = _blobs(pulled)
    assert sorted(b.blob_id for b in merged.blobs) == sorted(blobs)
    for blob in merged.blobs:
        data = blobs[blob.blob_id]
        # Each layer ends with its own v5 bootstrap, found the way nydus-snapshotter finds it.
        layer_boot, meta = read_layer_meta(lambda off, n, d=data: d[off : off + n], len(data))
        assert meta == b""
        (own,) = read_bootstrap_v5(layer_boot).blobs
        assert own.blob_id == c.PLACEHOLDER_BLOB_ID
        assert (blob.chunk_count, blob.compressed_size) == (own.chunk_count, own.compressed_size)
        assert blob.features == own.features & ~c.BF_INLINED_FS_META


def test_v5_aligned_chunks(registry_plain: RegistryServer, tmp_path: Any) -> None:
    _, pulled, _ = _convert(
        registry_plain, tmp_path, "aligned", {"fs_version": "5", "fs_align_chunk": "true"}
    )
    merged = read_bootstrap_v5(_tar_files(pulled.bootstrap_tar)[NYDUS_BOOT_TAR])
    offsets = [ch.uncompressed_offset for rec in merged.inodes.values() for ch in rec.chunks]
    assert offsets and all(off % 4096 == 0 for off in offsets)
    assert any(
        size % 4096 for size in (ch.uncompressed_size for r in merged.inodes.values() for ch in r.chunks)
    )
