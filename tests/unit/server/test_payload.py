from __future__ import annotations

import json
import re

import pytest

from accel.server.payload import PayloadError, Resource, child_manifest, parse_event, parse_reference
from tests.unit.server.test_app import CLOUD_PAYLOAD, DEFAULT_PAYLOAD, DIGEST


def test_default_format() -> None:
    event = parse_event(json.dumps(DEFAULT_PAYLOAD).encode(), "application/json")
    assert event.push and event.operator == "admin"
    assert [r.resource_url for r in event.resources] == ["harbor.dev/library/busybox:latest"]
    assert event.resources[0].digest == DIGEST


def test_cloudevents_by_content_type_or_specversion() -> None:
    body = json.dumps(CLOUD_PAYLOAD).encode()
    for content_type in ("application/cloudevents+json", "application/json", ""):
        event = parse_event(body, content_type)
        assert event.push and event.type == "harbor.artifact.pushed"
        assert event.resources[0].tag == "latest"


def test_other_types_are_not_pushes() -> None:
    assert not parse_event(json.dumps({**DEFAULT_PAYLOAD, "type": "SCANNING_COMPLETED"}).encode(), "").push
    cloud = {**CLOUD_PAYLOAD, "type": "harbor.artifact.deleted"}
    assert not parse_event(json.dumps(cloud).encode(), "application/cloudevents+json").push


def test_unknown_fields_are_tolerated() -> None:
    payload = json.loads(json.dumps(DEFAULT_PAYLOAD))
    payload["event_data"]["custom_attributes"] = {"a": "b"}
    payload["event_data"]["resources"][0]["scan_overview"] = {"x": 1}
    assert parse_event(json.dumps(payload).encode(), "").push


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("harbor.dev/library/busybox:latest", ("harbor.dev", "library/busybox", "latest", "")),
        ("Harbor.Dev:8443/a/b/c:v1.2-rc_1", ("Harbor.Dev:8443", "a/b/c", "v1.2-rc_1", "")),
        (f"harbor.dev/library/busybox@{DIGEST}", ("harbor.dev", "library/busybox", "", DIGEST)),
        (f"127.0.0.1:5000/x:t@{DIGEST}", ("127.0.0.1:5000", "x", "t", DIGEST)),
        ("[::1]:5000/x:t", ("[::1]:5000", "x", "t", "")),
    ],
)
def test_parse_reference(value: str, expected: tuple[str, str, str, str]) -> None:
    ref = parse_reference(value)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "busybox",
        "harbor.dev/",
        "https://harbor.dev/library/busybox:latest",
        "user:pw@harbor.dev/library/busybox:latest",
        "harbor.dev/Library/busybox:latest",
        "harbor.dev/library/busybox:",
        "harbor.dev/library/busybox@sha256:short",
        "harbor.dev/library/busybox:latest\n",
        "harbor.dev/a/../b:latest",
    ],
)
def test_parse_reference_rejects(value: str) -> None:
    with pytest.raises(PayloadError):
        parse_reference(value)


def test_child_manifest_detection() -> None:
    by_digest = f"harbor.dev/library/busybox@{DIGEST}"
    assert child_manifest(Resource(resource_url=by_digest, tag=DIGEST), parse_reference(by_digest))
    tagged = "harbor.dev/library/busybox:latest"
    assert not child_manifest(Resource(resource_url=tagged, tag="latest"), parse_reference(tagged))
    assert not child_manifest(Resource(resource_url=tagged), parse_reference(tagged))


_PUSH = b'{"type": "PUSH_ARTIFACT", "operator": "admin"}'


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
        (b'{"type": "PUSH_ARTIFACT", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (_PUSH.decode().encode("utf-16"), "not UTF-8"),
        (_PUSH.decode().encode("utf-32"), "not UTF-8"),
        (_PUSH.decode().encode("utf-16-le"), "invalid JSON body"),
        (_PUSH.decode().encode("utf-16-be"), "invalid JSON body"),
        (b"\xef\xbb\xbf" + _PUSH, "BOM"),
        (b'{"type": "PUSH_ARTIFACT", "operator": "\xc3\x28"}', "not UTF-8"),
        (b'{"type": "PUSH_ARTIFACT", "operator": "a\x00b"}', "control character"),
        (b'{"type": "PUSH_ARTIFACT", "operator": "\\ud800"}', "lone surrogate \\ud800"),
        (b'{"type": "PUSH_ARTIFACT", "\\udfff": 1}', "lone surrogate \\udfff"),
    ],
)
def test_hostile_encodings_are_payload_errors(body: bytes, why: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(why)):
        parse_event(body, "application/json")


def test_escaped_nul_and_paired_surrogates_are_data() -> None:
    event = parse_event(b'{"type": "PUSH_ARTIFACT", "operator": "a\\u0000\\ud83d\\ude00"}', "")
    assert event.operator == "a\x00\U0001f600"
