"""Harbor webhook payloads (Default and CloudEvents formats) and the resource references they carry."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from accel.errors import AccelError
from accel.oci.digest import is_digest

PUSH_ARTIFACT = "PUSH_ARTIFACT"
CLOUDEVENT_PUSH = "harbor.artifact.pushed"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?P<host>{_HOST}(?::[0-9]{{1,5}})?)/(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[A-Za-z0-9_+.-]+:[0-9a-fA-F]{32,}))?$"
)

#: What ``parse_reference`` accepts, as a JSON Schema pattern (no named groups; sha256 digests only).
REFERENCE_PATTERN = (
    rf"^{_HOST}(?::[0-9]{{1,5}})?/{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


class PayloadError(AccelError):
    """The webhook body is not a Harbor event we can read."""

    code = "ERR_ILLEGAL_PARAMETER"
    status = 400


class Resource(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    digest: str = ""
    tag: str = ""
    resource_url: str = Field(max_length=4096)


class Repository(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    date_created: int | None = None
    name: str = ""
    namespace: str = ""
    repo_full_name: str = ""
    repo_type: str = ""


class EventData(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    resources: list[Resource] = Field(default=[], max_length=1000)
    repository: Repository | None = None


class HarborEvent(BaseModel):
    """Harbor's Default payload format."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    occur_at: int | None = None
    operator: str = ""
    event_data: EventData | None = None


class CloudEvent(BaseModel):
    """Harbor's CloudEvents payload format (``type`` is ``harbor.artifact.pushed`` for pushes)."""

    model_config = ConfigDict(extra="allow", strict=True)

    specversion: str
    id: str = ""
    source: str = ""
    type: str
    datacontenttype: str = ""
    time: str = ""
    operator: str = ""
    requestid: str = ""
    data: EventData | None = None


@dataclass(frozen=True)
class Event:
    """A webhook event in one shape, whatever format it came in."""

    push: bool
    type: str
    operator: str
    resources: list[Resource]


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str
    digest: str

    @property
    def untagged(self) -> bool:
        """True for digest-only references: Harbor's events for the child manifests of a multi-arch push."""
        return not self.tag


def parse_reference(value: str) -> Reference:
    match = _REFERENCE.fullmatch(value)
    if match is None or len(value) > 4096:
        raise PayloadError(f"invalid resource_url {value[:200]!r}: expected host/repository[:tag][@digest]")
    digest = match["digest"] or ""
    if digest and not is_digest(digest):
        raise PayloadError(f"invalid digest in resource_url {value[:200]!r}")
    return Reference(match["host"], match["repo"], match["tag"] or "", digest)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "<body>"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _decode_json(body: bytes) -> Any:
    """Strict RFC 8259 JSON: UTF-8 without BOM, no lone surrogates, nesting bounded by the parser.

    ``json.loads(bytes)`` would guess UTF-16/32 and accept escaped lone surrogates, which no UTF-8 log
    line or database column can hold; Harbor sends UTF-8, so anything else is refused up front.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"invalid JSON body: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PayloadError(f"invalid JSON body: {exc}") from None
    except RecursionError:
        # The C decoder recurses once per nesting level; far deeper than any webhook we accept.
        raise PayloadError("invalid JSON body: nested too deeply") from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise PayloadError(f"invalid JSON body: lone surrogate {bad} in a string") from None
    except RecursionError:
        raise PayloadError("invalid JSON body: nested too deeply") from None
    return data


def parse_event(body: bytes, content_type: str) -> Event:
    """Decode a webhook body; raises :class:`PayloadError` for bad JSON or wrong field types."""
    data = _decode_json(body)
    if not isinstance(data, dict):
        raise PayloadError("invalid body: expected a JSON object")
    try:
        if "cloudevents" in content_type.lower() or "specversion" in data:
            cloud = CloudEvent.model_validate(data)
            push = cloud.type in (CLOUDEVENT_PUSH, PUSH_ARTIFACT)
            resources = cloud.data.resources if cloud.data else []
            return Event(push, cloud.type, cloud.operator, resources)
        event = HarborEvent.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(f"invalid payload: {_describe(exc)}") from None
    resources = event.event_data.resources if event.event_data else []
    return Event(event.type == PUSH_ARTIFACT, event.type, event.operator, resources)


def child_manifest(resource: Resource, ref: Reference) -> bool:
    """Harbor sends child manifests of an index by digest: no tag, or the digest in the ``tag`` field."""
    return ref.untagged or is_digest(resource.tag)
