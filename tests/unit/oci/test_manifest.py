from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from accel.errors import ConversionError, UnsupportedError
from accel.oci import mediatypes as mt
from accel.oci.digest import of_bytes
from accel.oci.manifest import Descriptor, ImageConfig, Index, Manifest, encode_json, parse_manifest
from accel.oci.platform import Platform

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")

# A manifest as some registry might serve it: indented, keys in an unusual order, unknown fields.
REGISTRY_MANIFEST = b"""{
  "layers": [
    {"size": 10, "digest": "%s", "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
     "annotations": {"z": "1", "a": "<&>"}, "x-layer-extra": {"k": [1, 2]}}
  ],
  "x-top-extra": "kept",
  "config": {"digest": "%s", "size": 5, "mediaType": "application/vnd.oci.image.config.v1+json"},
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "schemaVersion": 2,
  "annotations": {"org.example": "\\u00e9t\\u00e9"}
}""" % (D2.encode(), D1.encode())


def test_manifest_round_trip_preserves_bytes_and_unknown_fields() -> None:
    m = Manifest.from_json(REGISTRY_MANIFEST)
    assert m.config.digest == D1
    assert m.layers[0].annotations == {"z": "1", "a": "<&>"}
    assert m.extra == {"x-top-extra": "kept"}
    assert m.layers[0].extra == {"x-layer-extra": {"k": [1, 2]}}
    assert not m.changed()
    assert m.to_bytes() == REGISTRY_MANIFEST
    assert m.descriptor().digest == of_bytes(REGISTRY_MANIFEST)
    canonical = m.to_json()
    # Written by hand from the rules: Go struct order, sorted maps, HTML escaping, UTF-8, unknown keys last.
    expected = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":5}},'
        f'"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":10,'
        '"annotations":{"a":"\\u003c\\u0026\\u003e","z":"1"},"x-layer-extra":{"k":[1,2]}}],'
        '"annotations":{"org.example":"\u00e9t\u00e9"},"x-top-extra":"kept"}'
    ).encode()
    assert canonical == expected
    again = Manifest.from_json(canonical)
    assert again.to_dict() == m.to_dict()
    assert again.to_bytes() == canonical


def test_changed_manifest_is_reencoded() -> None:
    m = Manifest.from_json(REGISTRY_MANIFEST)
    m.annotations["new"] = "value"
    assert m.changed()
    assert m.to_bytes() == m.to_json()
    assert json.loads(m.to_bytes())["x-top-extra"] == "kept"
    m2 = Manifest.from_json(REGISTRY_MANIFEST)
    m2.layers[0] = m2.layers[0].with_annotations({"b": "2"})
    assert m2.to_bytes() != REGISTRY_MANIFEST
    assert json.loads(m2.to_bytes())["layers"][0]["annotations"] == {"a": "<&>", "b": "2", "z": "1"}


def test_descriptor_fields_round_trip() -> None:
    obj: dict[str, Any] = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": D1,
        "size": 3,
        "urls": ["https://example.com/blob"],
        "annotations": {"k": "v"},
        "data": base64.b64encode(b"abc").decode(),
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8", "features": ["x"]},
        "artifactType": "application/x-test",
        "unknown": True,
    }
    d = Descriptor.from_dict(obj)
    assert d.data == b"abc"
    assert d.platform == Platform("linux", "arm64", "v8")
    assert d.urls == ("https://example.com/blob",)
    assert d.to_dict() == obj
    assert list(d.to_dict()) == list(obj)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"digest": "sha256:short"}, "invalid digest"),
        ({"size": -1}, "size"),
        ({"size": "10"}, "size"),
        ({"size": True}, "size"),
        ({"mediaType": None}, "mediaType"),
        ({"annotations": {"a": 1}}, "annotations"),
        ({"urls": "x"}, "urls"),
        ({"data": "!!!"}, "base64"),
        ({"platform": {"os": "linux"}}, "platform"),
    ],
)
def test_descriptor_errors(patch: dict[str, Any], message: str) -> None:
    obj = {"mediaType": mt.OCI_LAYER, "digest": D1, "size": 1, **patch}
    with pytest.raises(ConversionError, match=message):
        Descriptor.from_dict(obj, "layers[3]")


def test_error_names_the_position() -> None:
    bad = {"schemaVersion": 2, "config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 1}, "layers": [
        {"mediaType": mt.OCI_LAYER, "digest": D1, "size": 1},
        {"mediaType": mt.OCI_LAYER, "digest": "nope", "size": 1},
    ]}  # fmt: skip
    with pytest.raises(ConversionError, match=r"layers\[1\]"):
        Manifest.from_json(json.dumps(bad).encode())


def test_schema1_is_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="schema1"):
        parse_manifest(b'{"schemaVersion": 1, "name": "x", "fsLayers": []}')
    with pytest.raises(UnsupportedError, match="schema1"):
        Manifest.from_json({"schemaVersion": 2, "mediaType": mt.DOCKER_SCHEMA1_SIGNED})
    with pytest.raises(UnsupportedError, match="schema1"):
        parse_manifest(b'{"name": "x", "fsLayers": []}', mt.DOCKER_SCHEMA1_SIGNED)
    with pytest.raises(UnsupportedError, match="schema1"):
        parse_manifest(b'{"name": "x", "fsLayers": []}', "application/json")
    # Some registries serve OCI manifests without mediaType as application/json: not schema1.
    plain = {
        "schemaVersion": 2,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 1},
        "layers": [],
    }
    assert isinstance(parse_manifest(json.dumps(plain).encode(), "application/json"), Manifest)


def test_parse_errors() -> None:
    with pytest.raises(ConversionError, match="not JSON"):
        Manifest.from_json(b"{nope")
    with pytest.raises(ConversionError, match="JSON object"):
        Manifest.from_json(b"[]")
    with pytest.raises(ConversionError, match="got an image index"):
        Manifest.from_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []})
    with pytest.raises(ConversionError, match="got an image manifest"):
        Index.from_json({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": {}, "layers": []})
    with pytest.raises(UnsupportedError, match="application/x-other"):
        parse_manifest({"schemaVersion": 2, "mediaType": "application/x-other"})
    with pytest.raises(ConversionError, match="missing config"):
        Manifest.from_json({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": []})
    with pytest.raises(ConversionError, match="schemaVersion"):
        Index.from_json({"schemaVersion": 3, "manifests": []})
    with pytest.raises(ConversionError, match="must be a list"):
        Index.from_json({"schemaVersion": 2, "manifests": {}})


def _index_doc(media_type: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": d,
                "size": 7,
                "platform": {"architecture": a, "os": "linux"},
            }
            for d, a in ((D1, "amd64"), (D2, "arm64"))
        ],
    }
    if media_type:
        doc["mediaType"] = media_type
    return doc


def test_parse_manifest_dispatch() -> None:
    for media_type in (mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST, None):
        doc = parse_manifest(json.dumps(_index_doc(media_type)).encode())
        assert isinstance(doc, Index)
        assert [str(d.platform) for d in doc.manifests] == ["linux/amd64", "linux/arm64"]
    assert parse_manifest(json.dumps(_index_doc(None)).encode(), mt.OCI_INDEX).media_type is None
    docker = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": D1, "size": 2},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": D2, "size": 3}],
    }
    m = parse_manifest(json.dumps(docker).encode())
    assert isinstance(m, Manifest)
    assert m.is_docker
    # Docker schema2 has no fields beyond the OCI ones, and its key order is the same.
    assert m.to_json() == json.dumps(docker, separators=(",", ":")).encode()


def test_index_round_trip_and_subject() -> None:
    doc = _index_doc(mt.OCI_INDEX)
    doc["subject"] = {"mediaType": mt.OCI_MANIFEST, "digest": D3, "size": 9}
    doc["artifactType"] = "application/x-art"
    doc["annotations"] = {"b": "2", "a": "1"}
    raw = json.dumps(doc, indent=1).encode()
    index = Index.from_json(raw)
    assert index.subject is not None and index.subject.digest == D3
    assert index.to_bytes() == raw
    out = json.loads(index.to_json())
    assert list(out) == ["schemaVersion", "mediaType", "artifactType", "manifests", "subject", "annotations"]
    assert list(out["annotations"]) == ["a", "b"]
    index.manifests.pop()
    assert index.changed()
    assert len(json.loads(index.to_bytes())["manifests"]) == 1


def test_encode_json_escapes_like_go() -> None:
    assert encode_json({"a": "<x>&\u2028\u00fc"}) == b'{"a":"\\u003cx\\u003e\\u0026\\u2028\xc3\xbc"}'


CONFIG = b"""{"architecture":"amd64","os":"linux","x-unknown":{"keep":1},
"config":{"Env":["A=b"],"Labels":{"l":"v"}},
"rootfs":{"type":"layers","diff_ids":["%s","%s"]},
"history":[{"created_by":"a"},{"created_by":"env","empty_layer":true},{"created_by":"b"}]}""" % (
    D1.encode(),
    D2.encode(),
)


def test_image_config() -> None:
    cfg = ImageConfig.from_json(CONFIG)
    assert cfg.diff_ids == [D1, D2]
    assert cfg.platform() == Platform("linux", "amd64")
    assert cfg.to_bytes() == CONFIG
    assert [h["created_by"] if h else None for h in cfg.layer_history()] == ["a", "b"]
    assert cfg.labels == {"l": "v"}
    cfg.replace_diff_id(1, D3)
    assert cfg.diff_ids == [D1, D3]
    assert cfg.changed()
    out = json.loads(cfg.to_bytes())
    assert out["x-unknown"] == {"keep": 1}
    assert list(out) == ["architecture", "os", "x-unknown", "config", "rootfs", "history"]
    cfg.set_label("l", None)
    assert "Labels" not in cfg.data["config"]
    cfg.set_label("new", "1")
    assert cfg.labels == {"new": "1"}
    cfg.append_layer(D1, {"created_by": "c"})
    assert cfg.diff_ids == [D1, D3, D1]
    assert cfg.layer_history()[-1] == {"created_by": "c"}
    cfg.history = []
    assert "history" not in cfg.data
    assert cfg.layer_history() == [None, None, None]


def test_image_config_errors() -> None:
    with pytest.raises(ConversionError, match="diff_ids"):
        ImageConfig.from_json(b'{"rootfs":{"type":"layers","diff_ids":["nope"]}}')
    with pytest.raises(ConversionError, match="history"):
        ImageConfig.from_json(b'{"history":{}}')
    empty = ImageConfig.from_json(b"{}")
    assert empty.diff_ids == []
    empty.diff_ids = [D1]
    assert empty.data["rootfs"] == {"type": "layers", "diff_ids": [D1]}
