"""Nydus ``oci_ref`` (zran) end to end on the real registry: the image costs a bootstrap and small meta blobs,
and every file reads back through the merged bootstrap, the zran tables and ranged GETs of the original
gzip layers in the registry (the independent reader of ``tests/support/zran_reader.py``)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from accel.converter import Converter
from accel.errors import AccelError
from accel.formats.nydus import constants as c
from accel.formats.nydus import read_bootstrap, to_tree
from accel.formats.nydus.tree import iter_tree
from accel.oci import annotations as keys
from accel.oci.manifest import Manifest, parse_manifest
from tests.support import zran_reader
from tests.support.configs import make_config
from tests.support.images import build_rich_image, layer_tars, push_layout
from tests.support.oci_apply import apply_layers
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, registry: RegistryServer) -> object:
    return make_config(
        tmp_path / "work",
        {registry.host: registry.source()},
        driver="nydus",
        driver_config={"oci_ref": "true"},
        tag_suffix="-nydus-oci-ref",
    )


def test_oci_ref_image_reads_back_from_the_original_gzip_layers(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    image = build_rich_image(tmp_path / "src", payload_size=6 << 20, payload_file_size=2 << 20)
    source = f"{registry_plain.host}/zran/app:v1"
    push_layout(image.layout, source, tls_verify=False)
    host, repo = registry_plain.host, "zran/app"
    with Converter(_config(tmp_path, registry_plain)) as converter:  # type: ignore[arg-type]
        first = converter.convert(source)
        again = converter.convert(source, target=f"{source}-again")
        client = converter.client
        fetched = client.get_manifest(host, repo, "v1-nydus-oci-ref")
        manifest = parse_manifest(fetched.data, fetched.media_type)
        assert isinstance(manifest, Manifest)
        source_layers = image.images[0].layers
        refs, boot_layer = manifest.layers[:-1], manifest.layers[-1]
        assert [layer.annotations[keys.NYDUS_REF] for layer in refs] == [s.digest for s in source_layers]
        assert all(layer.annotations[keys.NYDUS_BLOB] == "true" for layer in refs)
        pushed, original = sum(r.size for r in refs), sum(s.size for s in source_layers)
        assert pushed < original // 4, f"{pushed} bytes of ref blobs for {original} of gzip layers"

        files = _bootstrap_layer(client.get_blob(host, repo, boot_layer.digest))
        merged = read_bootstrap(files["image/image.boot"])
        metas = {
            ref.digest.split(":", 1)[1]: zran_reader.parse_meta(
                files[f"image/{ref.digest.split(':', 1)[1]}.blob.meta"]
            )
            for ref in refs
        }
        by_original = {r.annotations[keys.NYDUS_REF].split(":", 1)[1]: r for r in refs}
        for entry in merged.blobs:
            ref = by_original[entry.blob_id]  # the chunks' blob is the original layer
            assert entry.features & c.BF_ZRAN and entry.features & c.BF_SEPARATE
            assert entry.blob_meta_digest.hex() == ref.digest.split(":", 1)[1]
            assert entry.blob_meta_size == ref.size and entry.blob_toc_size > 0

        @functools.cache
        def read_range(blob_id: str, offset: int, size: int) -> bytes:
            return client.read_blob_range(host, repo, "sha256:" + blob_id, offset, size)

        got = {}
        for path, node in iter_tree(to_tree(merged)):
            if node.is_reg:
                data = b""
                for ch in node.chunks:
                    entry = merged.blobs[ch.blob_index]
                    meta = metas[by_original[entry.blob_id].digest.split(":", 1)[1]]
                    data += zran_reader.read_chunk(
                        meta, ch.ci_index, functools.partial(read_range, entry.blob_id)
                    )
                got[path.decode("utf-8", "surrogateescape")] = hashlib.sha256(data).hexdigest()
        # accelctl check reads the same image its own way (the project's zran reader) and agrees.
        report = converter.check(f"{source}-nydus-oci-ref")
        assert report.ok, [f for image in report.images for f in image.findings if not f.ok]
        details = [f.detail for image in report.images for f in image.findings]
        assert any("zran contexts into" in d for d in details) and any("paths equal" in d for d in details)
    want = {p: e.sha256 for p, e in apply_layers(list(layer_tars(image))).items() if e.type == "reg"}
    assert got == want
    assert again.target_digest == first.target_digest, "same source and options, same digests"


def test_oci_ref_image_in_another_repository_brings_its_original_layers(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    """nydusd fetches chunks from the original layers by digest in the image's repository: converted into
    another one, the image needs them there too, though its manifest does not list them."""
    image = build_rich_image(tmp_path / "src")
    source = f"{registry_plain.host}/zran/origin:v1"
    push_layout(image.layout, source, tls_verify=False)
    target = f"{registry_plain.host}/zran/elsewhere:v1-nydus-oci-ref"
    with Converter(_config(tmp_path, registry_plain)) as converter:  # type: ignore[arg-type]
        converter.convert(source, target=target)
        client = converter.client
        for layer in image.images[0].layers:
            assert client.blob_exists(registry_plain.host, "zran/elsewhere", layer.digest)
        report = converter.check(target)
    assert report.ok, [f for r in report.images for f in r.findings if not f.ok]


def _bootstrap_layer(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_oci_ref_refuses_a_zstd_image_with_the_reason(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src", compression="zstd")
    source = f"{registry_plain.host}/zran/zstd:v1"
    push_layout(image.layout, source, tls_verify=False)
    with Converter(_config(tmp_path, registry_plain)) as converter:  # type: ignore[arg-type]
        with pytest.raises(AccelError, match="oci_ref indexes gzip layers in place"):
            converter.convert(source)
        tags = converter.client.list_tags(registry_plain.host, "zran/zstd")
    assert tags == ["v1"], "nothing pushed under a target tag"
