"""SOCI index manifests, the v2 SOCI-enabled image and the referrers listing, against the index examples."""

from __future__ import annotations

import json
from typing import Any

import pytest

from accel.errors import FormatError
from accel.formats.soci import (
    EMPTY_CONFIG,
    EMPTY_CONFIG_DIGEST,
    convert_manifest,
    layer_compression,
    plan_layers,
    read_ztoc,
    referrers_index,
    should_disable_xattrs,
    soci_enabled_index,
    soci_index_descriptor,
    soci_index_manifest,
    ztoc_descriptor,
)
from accel.oci.digest import of_bytes
from accel.oci.manifest import Descriptor, Manifest
from accel.oci.manifest import encode_json as go_json
from accel.oci.platform import Platform

from .conftest import DATA, SPAN, TOOL

EXAMPLES = DATA / "index-examples"
DIGESTS: dict[str, dict[str, Any]] = json.loads((EXAMPLES / "DIGESTS.json").read_text())
PLATFORM = Platform("linux", "amd64")


def _example(name: str) -> bytes:
    data = (EXAMPLES / name).read_bytes()
    assert (of_bytes(data), len(data)) == (DIGESTS[name]["digest"], DIGESTS[name]["size"])
    return data


def _ztoc_desc() -> Descriptor:
    manifest = json.loads(_example("image-manifest.json"))
    layer = manifest["layers"][1]  # the small first layer is skipped (under the minimum size)
    ztoc = (DATA / "ztoc" / f"layer-pax.span{SPAN}.ztoc").read_bytes()
    return ztoc_descriptor(
        of_bytes(ztoc),
        len(ztoc),
        layer_digest=layer["digest"],
        layer_media_type=layer["mediaType"],
        span_size=SPAN,
    )


def _subject() -> Descriptor:
    manifest = _example("image-manifest.json")
    return Descriptor(json.loads(manifest)["mediaType"], of_bytes(manifest), len(manifest))


def test_empty_config() -> None:
    assert _example("empty-config.json") == EMPTY_CONFIG and of_bytes(EMPTY_CONFIG) == EMPTY_CONFIG_DIGEST


def test_v1_index_and_referrers_listing() -> None:
    index = soci_index_manifest([_ztoc_desc()], version=1, subject=_subject(), build_tool_identifier=TOOL)
    assert index.to_json() == _example("soci-index-v1.json")
    listing = referrers_index([soci_index_descriptor(index, version=1)])
    assert listing.to_json() == _example("referrers-response-or-fallback-tag-index.json")


def test_v2_index_and_soci_enabled_image() -> None:
    index = soci_index_manifest([_ztoc_desc()], version=2, build_tool_identifier=TOOL)
    assert index.to_json() == _example("soci-index-v2.json")
    source = Manifest.from_json(_example("image-manifest.json"))
    manifest = convert_manifest(source, of_bytes(index.to_json()))
    assert manifest.to_json() == _example("image-manifest-soci-v2.json")
    image = soci_enabled_index(
        [(manifest, PLATFORM)],
        [
            soci_index_descriptor(
                index, version=2, platform=PLATFORM, image_manifest_digest=of_bytes(manifest.to_json())
            )
        ],
    )
    assert image.to_json() == _example("oci-index-soci-v2.json")


def test_convert_docker_manifest_drops_unknown_fields() -> None:
    docker = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": "sha256:" + "a" * 64,
            "size": 7,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": "sha256:" + "b" * 64,
                "size": 9,
            }
        ],
        "unknown": "dropped",
    }
    out = json.loads(convert_manifest(Manifest.from_json(go_json(docker)), None).to_json())
    assert out["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert out["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert out["layers"][0]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert "unknown" not in out and "annotations" not in out


def test_disable_xattrs_annotation() -> None:
    desc = ztoc_descriptor(
        "sha256:" + "c" * 64,
        5,
        layer_digest="sha256:" + "d" * 64,
        layer_media_type="x",
        span_size=1,
        disable_xattrs=True,
    )
    assert desc.annotations["com.amazon.soci.disable-xattrs"] == "true"
    assert list(desc.to_dict()) == ["mediaType", "digest", "size", "annotations"]


def test_index_errors() -> None:
    with pytest.raises(FormatError):
        soci_index_manifest([], version=2)
    with pytest.raises(FormatError):
        soci_index_manifest([_ztoc_desc()], version=1)
    with pytest.raises(FormatError):
        soci_index_manifest([_ztoc_desc()], version=2, subject=_subject())


def test_go_json_escapes_like_go() -> None:
    assert go_json({"a": "<&>\u2028é"}) == '{"a":"\\u003c\\u0026\\u003e\\u2028é"}'.encode()


@pytest.mark.parametrize(
    ("media_type", "kind"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
        ("application/vnd.oci.image.layer.v1.tar", "uncompressed"),
        ("application/vnd.oci.image.layer.v1.tar+zstd", None),
        ("application/vnd.oci.image.config.v1+json", None),
    ],
)
def test_layer_compression(media_type: str, kind: str | None) -> None:
    assert layer_compression(media_type) == kind


def test_plan_layers() -> None:
    layers = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:" + "1" * 64,
            "size": 110,
        },
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:" + "2" * 64,
            "size": 10 << 20,
        },
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
            "digest": "sha256:" + "3" * 64,
            "size": 1 << 30,
        },
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": "sha256:" + "4" * 64,
            "size": 11 << 20,
        },
    ]
    plans = plan_layers([Descriptor.from_dict(layer) for layer in layers])
    assert [(p.index, p.compression) for p in plans] == [
        (0, None),
        (1, "gzip"),
        (2, None),
        (3, "uncompressed"),
    ]
    assert plans[0].skip_reason is not None and "min-layer-size" in plans[0].skip_reason
    assert plans[2].skip_reason is not None and "zstd" in plans[2].skip_reason
    assert plan_layers([Descriptor.from_dict(layers[0])], min_layer_size=0)[0].compression == "gzip"


def test_should_disable_xattrs() -> None:
    toc = read_ztoc((DATA / "ztoc" / f"layer-pax.span{SPAN}.ztoc").read_bytes()).toc
    assert not should_disable_xattrs(toc)  # has SCHILY.xattr records and an opaque whiteout
    plain = [me for me in toc if not me.name.endswith(".wh..wh..opq") and not me.pax_records]
    assert should_disable_xattrs(plain)
    assert not should_disable_xattrs([*plain, next(me for me in toc if me.name.endswith(".wh..wh..opq"))])
