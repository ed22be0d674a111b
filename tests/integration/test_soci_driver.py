"""The soci driver end to end: v2 SOCI-enabled images and v1 referrers on the real registry."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from accel.config import Config
from accel.converter import Converter
from accel.errors import ConversionError
from accel.formats import soci
from accel.oci.manifest import Index, Manifest, parse_manifest
from accel.registry import RegistryClient
from tests.support.configs import make_config
from tests.support.images import build_multiplatform_image, build_rich_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration

# The test layers are small; index them all (the default 10 MiB floor is tested on its own).
ALL_LAYERS = {"min_layer_size": "0"}


def soci_config(tmp_path: Path, registry: RegistryServer, **options: str) -> Config:
    return make_config(
        tmp_path / "work",
        {registry.host: registry.source()},
        driver="soci",
        driver_config={**ALL_LAYERS, **options},
        tag_suffix="-soci",
    )


def document(client: RegistryClient, host: str, repo: str, reference: str) -> Manifest | Index:
    fetched = client.get_manifest(host, repo, reference)
    return parse_manifest(fetched.data, fetched.media_type)


def verify_every_ztoc(client: RegistryClient, host: str, repo: str, index: Manifest) -> int:
    """Run the verifier on every zTOC of a SOCI index against the layer it names; returns the count."""
    for ztoc in index.layers:
        layer_digest = ztoc.annotations["com.amazon.soci.image-layer-digest"]
        data = client.get_blob(host, repo, ztoc.digest)
        sink = io.BytesIO()
        client.pull_blob(host, repo, layer_digest, None, sink)
        report = soci.verify_ztoc(data, io.BytesIO(sink.getvalue()), layer_digest=layer_digest)
        assert report.entries > 0
    return len(index.layers)


def test_v2_soci_enabled_image(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_multiplatform_image(tmp_path / "src")
    source = f"{registry_plain.host}/soci/multi:v1"
    push_layout(image.layout, source, tls_verify=False)
    config = soci_config(tmp_path, registry_plain)

    with Converter(config) as converter:
        result = converter.convert(source)
        again = converter.convert(source, target=f"{source}-again")
        top = document(converter.client, registry_plain.host, "soci/multi", "v1-soci")
        assert isinstance(top, Index)
        images = [e for e in top.manifests if e.artifact_type is None]
        indexes = [e for e in top.manifests if e.artifact_type == soci.INDEX_V2]
        assert len(images) == 2 and len(indexes) == 2, "one SOCI index per platform"
        for entry in images:
            manifest = document(converter.client, registry_plain.host, "soci/multi", entry.digest)
            assert isinstance(manifest, Manifest)
            soci_digest = manifest.annotations["com.amazon.soci.index-digest"]
            listed = next(i for i in indexes if i.digest == soci_digest)
            assert listed.platform == entry.platform
            assert listed.annotations["com.amazon.soci.image-manifest-digest"] == entry.digest
            soci_index = document(converter.client, registry_plain.host, "soci/multi", soci_digest)
            assert isinstance(soci_index, Manifest)
            assert soci_index.config.media_type == soci.INDEX_V2 and soci_index.subject is None
            assert verify_every_ztoc(converter.client, registry_plain.host, "soci/multi", soci_index) == 2
    assert again.target_digest == result.target_digest, "same image and options, same digests"
    # Still an ordinary image for everyone else.
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--all",
            "--src-tls-verify=false",
            f"docker://{result.target}",
            f"oci:{tmp_path / 'out'}:x",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_v1_referrers_and_fallback_tag(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src")
    source = f"{registry_plain.host}/soci/rich:v1"
    digest = push_layout(image.layout, source, tls_verify=False)
    config = soci_config(tmp_path, registry_plain, index_version="v1")

    with Converter(config) as converter:
        result = converter.convert(source)
        converter.convert(source)  # idempotent: the fallback tag must not pile up referrers
        referrers = converter.client.referrers(registry_plain.host, "soci/rich", digest, soci.INDEX_V1)
        tag_index = converter.client.get_manifest(registry_plain.host, "soci/rich", "sha256-" + digest[7:])
        listed = referrers["manifests"]
        assert len(listed) == 1 and listed[0]["artifactType"] == soci.INDEX_V1
        assert json.loads(tag_index.data)["manifests"] == listed
        soci_index = document(converter.client, registry_plain.host, "soci/rich", listed[0]["digest"])
        assert isinstance(soci_index, Manifest)
        assert soci_index.subject is not None and soci_index.subject.digest == digest
        assert verify_every_ztoc(converter.client, registry_plain.host, "soci/rich", soci_index) == 3
        assert converter.client.head_manifest(registry_plain.host, "soci/rich", "v1-soci") is None
    assert result.target_digest == digest, "v1 leaves the image as it is"


def test_skipped_layers_are_reported(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src", compression="zstd")
    source = f"{registry_plain.host}/soci/zstd:v1"
    push_layout(image.layout, source, tls_verify=False)
    with Converter(soci_config(tmp_path, registry_plain)) as converter, pytest.raises(ConversionError) as err:
        converter.convert(source)
    assert "no layer can be indexed" in str(err.value)

    small = build_rich_image(tmp_path / "small")
    push_layout(small.layout, f"{registry_plain.host}/soci/small:v1", tls_verify=False)
    config = make_config(
        tmp_path / "w2",
        {registry_plain.host: registry_plain.source()},
        driver="soci",
        driver_config={"min_layer_size": str(small.images[0].layers[1].size + 1)},
        tag_suffix="-soci",
    )
    with Converter(config) as converter:
        result = converter.convert(f"{registry_plain.host}/soci/small:v1")
    skipped = [note for note in result.notes if "less than min-layer-size" in note]
    assert len(skipped) == 2 and all("not indexed" in note for note in skipped)
    top = parse_manifest(
        subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{result.target}"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
    )
    # A single-platform source becomes an index: the image, then its SOCI index.
    assert isinstance(top, Index) and [e.artifact_type for e in top.manifests] == [None, soci.INDEX_V2]
