"""Nydus with ``batch_size`` end to end against the real registry: an image of many small files (and big
ones) converted by the driver, then read back from the registry through the merged bootstrap, the blob
metas and ranged blob reads, as nydusd would, and compared with the source's layers applied."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
from pathlib import Path

import pytest

from accel.converter import Converter
from accel.formats import nydus
from accel.formats.nydus.blob import BlobMeta
from accel.oci.manifest import Manifest, parse_manifest
from tests.support.configs import make_config
from tests.support.images import build_rich_image, layer_tars, push_layout
from tests.support.oci_apply import apply_layers
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration

BATCH = "0x100000"
LAZY = ["/app/README", "/app/payload/00007.bin", "/etc/hostname"]


def _tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_batch_size_conversion_reads_back_from_the_registry(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    # 2 MiB of pseudo-random payload in 128 files of 16 KiB: one chunk each, under half the batch size.
    source = build_rich_image(
        tmp_path / "src", payload_size=2 << 20, payload_file_size=16 << 10, duplicate=False
    )
    host = registry_plain.host
    push_layout(source.layout, f"{host}/batch/app:v1", tls_verify=False)
    config = make_config(
        tmp_path / "work",
        {host: registry_plain.source()},
        driver="nydus",
        driver_config={"batch_size": BATCH},
        tag_suffix="-batch",
    )
    with Converter(config) as converter:
        converter.convert(f"{host}/batch/app:v1")
        fetched = converter.client.get_manifest(host, "batch/app", "v1-batch")
        manifest = parse_manifest(fetched.data, fetched.media_type)
        assert isinstance(manifest, Manifest)
        *data_layers, boot_layer = manifest.layers
        boot_tar = gzip.decompress(converter.client.get_blob(host, "batch/app", boot_layer.digest))
        members = _tar_members(boot_tar)
        bs = nydus.read_bootstrap(members["image/image.boot"])

        # The blob table says batch, and each data layer's blob.meta (in the bootstrap layer) carries a
        # batch table that its chunk infos point into.
        units = 0
        for layer in data_layers:
            hex_id = layer.digest.split(":", 1)[1]
            meta = members[f"image/{hex_id}.blob.meta"]
            features, entries = struct.unpack_from("<I4xI", meta, len(meta) - 4096 + 4)
            table_offset, table_size, table_count = struct.unpack_from("<QQI", meta, len(meta) - 4096 + 40)
            assert features & 0x84 == 0x84 and table_offset == 24 * entries and table_size == 40 * table_count
            units += table_count
        assert units >= 2
        assert all(entry.features & 0x84 == 0x84 for entry in bs.blobs)
        layer_ids = [d.digest.split(":", 1)[1] for d in data_layers]
        assert bs.blobs and {entry.blob_id for entry in bs.blobs} <= set(layer_ids)

        # Every file, read with ranged requests to the registry, equals the source image's tree.
        by_blob = {i: "sha256:" + entry.blob_id for i, entry in enumerate(bs.blobs)}

        def read_range(blob_index: int, offset: int, length: int) -> bytes:
            return converter.client.read_blob_range(host, "batch/app", by_blob[blob_index], offset, length)

        want = {p: e for p, e in apply_layers(list(layer_tars(source))).items() if e.type == "reg"}
        metas: dict[int, BlobMeta] = {}
        got = {}
        for raw_path, nid in bs.entries:
            path = raw_path.decode("utf-8", "surrogateescape")
            if bs.inodes[nid].inode.mode & 0o170000 == 0o100000:
                got[path] = hashlib.sha256(nydus.read_file(bs, path, read_range, metas)).hexdigest()
        assert got == {p: e.sha256 for p, e in want.items()}
        assert sum(1 for p in got if p.startswith("/app/payload/")) == 128

        # accelctl check: the layers, the bootstrap and the tree against the source; lazy reads of small
        # (batched) files through the bootstrap layer's index.
        report = converter.check(f"{host}/batch/app:v1-batch", lazy=LAZY)
    assert report.ok, [f.describe() for f in report.failures]
    lazy = report.images[-1].lazy
    assert [(read.path, read.size) for read in lazy] == [(p, want[p].size) for p in LAZY]
    assert all(read.fetched.bytes > 0 for read in lazy)
