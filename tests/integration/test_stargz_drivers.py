"""The estargz and zstdchunked drivers through the pipeline, on the real registry.

Each converted layer is downloaded again and checked with our readers (the reference Go library checks
the same output in tests/interop/estargz); skopeo copies every converted image as an independent client.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
from pathlib import Path

import pytest

from accel.config import Config
from accel.converter import Converter
from accel.formats import estargz, zstdchunked
from accel.formats.tar import TarReader, clean_path
from accel.oci import mediatypes as mt
from accel.oci.manifest import ImageConfig, Index, Manifest, parse_manifest
from accel.registry import RegistryClient
from tests.support.configs import make_config
from tests.support.images import build_docker_image, build_multiplatform_image, layer_tars, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration


def converted(client: RegistryClient, host: str, ref: str) -> tuple[Manifest, ImageConfig, list[bytes]]:
    repo, _, tag = ref.partition(":")
    fetched = client.get_manifest(host, repo, tag)
    manifest = parse_manifest(fetched.data, fetched.media_type)
    assert isinstance(manifest, Manifest)
    config = ImageConfig.from_json(client.get_blob(host, repo, manifest.config.digest))
    blobs = [client.get_blob(host, repo, layer.digest, max_size=256 << 20) for layer in manifest.layers]
    return manifest, config, blobs


def _files(tar: bytes) -> dict[str, tuple[bytes, int, str, bytes]]:
    """Every entry but eStargz's own (landmarks, TOC): type, mode, link target and content digest."""
    out = {}
    reader = TarReader(io.BytesIO(tar))
    for entry in reader:
        name = clean_path(entry.name)
        if name in (estargz.PREFETCH_LANDMARK, estargz.NO_PREFETCH_LANDMARK, estargz.TOC_NAME):
            continue
        out[name] = (entry.type, entry.mode, entry.linkname, hashlib.sha256(reader.read()).digest())
    return out


def skopeo_copy(ref: str, dest: Path) -> None:
    subprocess.run(
        ["skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:x"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def config_for(tmp_path: Path, registry: RegistryServer, driver: str, **options: str) -> Config:
    return make_config(
        tmp_path / "work",
        {registry.host: registry.source()},
        driver=driver,
        driver_config=options,
        tag_suffix="-x",
    )


def test_estargz_image(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_docker_image(tmp_path / "src")
    source = f"{registry_plain.host}/stargz/rich:v1"
    push_layout(image.layout, source, format=None, tls_verify=False)
    sources_tars = list(layer_tars(image))

    with Converter(config_for(tmp_path, registry_plain, "estargz")) as converter:
        result = converter.convert(source)
        manifest, config, blobs = converted(converter.client, registry_plain.host, "stargz/rich:v1-x")
        again = converter.convert(result.target, target=f"{registry_plain.host}/stargz/rich:v1-x-again")
        kept, _, _ = converted(converter.client, registry_plain.host, "stargz/rich:v1-x-again")

    assert manifest.media_type == mt.OCI_MANIFEST
    assert len(config.diff_ids) == len(blobs) == len(sources_tars)
    for layer, blob, diff_id, source_tar in zip(
        manifest.layers, blobs, config.diff_ids, sources_tars, strict=True
    ):
        assert layer.media_type == mt.OCI_LAYER_GZIP
        toc_digest = layer.annotations[estargz.TOC_DIGEST_ANNOTATION]
        report = estargz.verify(blob, toc_digest)
        plain = gzip.decompress(blob)
        assert report.diff_id == diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
        assert int(layer.annotations[estargz.UNCOMPRESSED_SIZE_ANNOTATION]) == len(plain)
        assert _files(plain) == _files(source_tar)
    assert [layer.digest for layer in kept.layers] == [layer.digest for layer in manifest.layers]
    assert len([n for n in again.notes if "already eStargz" in n]) == len(blobs)
    skopeo_copy(result.target, tmp_path / "out")


@pytest.mark.parametrize("flavour", ["storage", "stargz"])
def test_zstdchunked_image(registry_plain: RegistryServer, tmp_path: Path, flavour: str) -> None:
    image = build_multiplatform_image(tmp_path / "src")
    source = f"{registry_plain.host}/zstd/{flavour}:v1"
    push_layout(image.layout, source, tls_verify=False)

    with Converter(config_for(tmp_path, registry_plain, "zstdchunked", flavour=flavour)) as converter:
        result = converter.convert(source)
        top = converter.client.get_manifest(registry_plain.host, f"zstd/{flavour}", "v1-x")
        index = parse_manifest(top.data, top.media_type)
        assert isinstance(index, Index)
        first = index.manifests[0].digest
        manifest, config, blobs = converted(converter.client, registry_plain.host, f"zstd/{flavour}:{first}")

    sources_tars = list(layer_tars(image, 0))
    for layer, blob, diff_id, source_tar in zip(
        manifest.layers, blobs, config.diff_ids, sources_tars, strict=True
    ):
        assert layer.media_type == mt.OCI_LAYER_ZSTD
        if flavour == "storage":
            checksum = layer.annotations[zstdchunked.MANIFEST_CHECKSUM_KEY]
            zstdchunked.verify_storage(
                blob, checksum, annotations=dict(layer.annotations), original=io.BytesIO(source_tar)
            )
            assert diff_id == "sha256:" + hashlib.sha256(source_tar).hexdigest(), (
                "the storage flavour keeps diff_ids"
            )
        else:
            report = estargz.verify(blob, layer.annotations[estargz.TOC_DIGEST_ANNOTATION])
            assert report.diff_id == diff_id
    skopeo_copy(result.target, tmp_path / "out")
