"""Typed OCI/Docker schema2 descriptors, manifests, indexes and image configs.

Parsing keeps every JSON field we do not model (in ``extra``), so nothing is lost on re-encoding.

``to_json()`` is a canonical re-encoding: compact separators, known keys in the order of the OCI Go structs
(``specs.Descriptor``, ``specs.Manifest``, ``specs.Index``, ``specs.Platform``), maps sorted, and ``<``,
``>``, ``&`` escaped — what Go's ``json.Marshal`` of those structs emits — followed by unknown keys in their
original order. It equals a registry's bytes only when the registry used the same encoding, so a
manifest that must keep its digest should be written with ``to_bytes()``, which returns the bytes it was
parsed from as long as nothing was changed, and the canonical encoding otherwise.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from accel.errors import ConversionError, UnsupportedError
from accel.oci import digest as _digest
from accel.oci import mediatypes as mt
from accel.oci.platform import Platform

_SCHEMA1: Final = frozenset({mt.DOCKER_SCHEMA1_MANIFEST, mt.DOCKER_SCHEMA1_SIGNED, "application/json"})
_DESCRIPTOR_KEYS: Final = (
    "mediaType",
    "digest",
    "size",
    "urls",
    "annotations",
    "data",
    "platform",
    "artifactType",
)
_MANIFEST_KEYS: Final = (
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "subject",
    "annotations",
)
_INDEX_KEYS: Final = ("schemaVersion", "mediaType", "artifactType", "manifests", "subject", "annotations")


def encode_json(obj: Any) -> bytes:
    """Compact JSON as Go's ``json.Marshal`` writes it (UTF-8, HTML characters escaped, keys as given)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # '<', '>' and '&' can only occur inside JSON strings, so replacing them in the output is safe.
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode()


def _load(data: bytes | Mapping[str, Any], what: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConversionError(f"invalid {what}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"invalid {what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConversionError(f"{where}: annotations must be an object of strings")
    return dict(value)


def _opt_str(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConversionError(f"{where} must be a string")
    return value


def _check_schema1(obj: Mapping[str, Any], media_type: str | None, what: str) -> None:
    body_type = obj.get("mediaType")
    header_says_schema1 = media_type in _SCHEMA1 and not body_type and obj.get("schemaVersion") != 2
    if obj.get("schemaVersion") == 1 or body_type in _SCHEMA1 or header_says_schema1:
        raise UnsupportedError(
            f"{what}: Docker schema1 manifests are not supported; push the image again with a current client "
            "(schema2 or OCI)"
        )


def _kind(obj: Mapping[str, Any], media_type: str | None) -> str | None:
    """The document's media type, else the Content-Type when it is a manifest or index type."""
    body_type = obj.get("mediaType")
    if body_type:
        return str(body_type)
    return media_type if media_type in mt.MANIFESTS or media_type in mt.INDEXES else None


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor. ``extra`` holds fields the OCI spec does not define."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None
    data: bytes | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise ConversionError(f"{where}: expected an object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise ConversionError(f"{where}: missing mediaType")
        if not isinstance(digest, str) or not _digest.is_digest(digest):
            raise ConversionError(f"{where}: invalid digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConversionError(f"{where}: size must be a non-negative integer, got {size!r}")
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ConversionError(f"{where}: urls must be a list of strings")
        platform = None
        if obj.get("platform") is not None:
            try:
                platform = Platform.from_dict(obj["platform"]) if isinstance(obj["platform"], dict) else None
            except ValueError as exc:
                raise ConversionError(f"{where}: {exc}") from None
            if platform is None:
                raise ConversionError(f"{where}: platform must be an object")
        data = None
        if obj.get("data") is not None:
            try:
                data = base64.b64decode(obj["data"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ConversionError(f"{where}: data is not valid base64") from None
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=_string_map(obj.get("annotations"), where),
            platform=platform,
            urls=tuple(urls),
            artifact_type=_opt_str(obj.get("artifactType"), f"{where}: artifactType"),
            data=data,
            extra={k: v for k, v in obj.items() if k not in _DESCRIPTOR_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.data is not None and self.data:
            out["data"] = base64.b64encode(self.data).decode()
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def replace(self, **changes: Any) -> Descriptor:
        return replace(self, **changes)

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        """A copy with ``annotations`` merged into the existing ones."""
        return replace(self, annotations={**self.annotations, **annotations})

    @classmethod
    def of(cls, data: bytes, media_type: str, **fields: Any) -> Descriptor:
        """The descriptor of ``data`` (sha256)."""
        return cls(media_type=media_type, digest=_digest.of_bytes(data), size=len(data), **fields)


class _Document:
    """Shared raw-bytes bookkeeping: ``to_bytes`` returns the parsed bytes until the document changes."""

    _raw: bytes | None = None
    _snapshot: dict[str, Any] | None = None

    schema_version: int
    media_type: str | None
    artifact_type: str | None
    subject: Descriptor | None
    annotations: dict[str, str]
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def _encode(self, body: dict[str, Any]) -> dict[str, Any]:
        """The fields manifests and indexes share, around ``body``, in the Go structs' order."""
        out: dict[str, Any] = {"schemaVersion": self.schema_version}
        if self.media_type:
            out["mediaType"] = self.media_type
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out.update(body)
        if self.subject is not None:
            out["subject"] = self.subject.to_dict()
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def _remember(self, raw: bytes | Mapping[str, Any]) -> None:
        if isinstance(raw, bytes | bytearray | memoryview):
            self._raw = bytes(raw)
            self._snapshot = copy.deepcopy(self.to_dict())

    def to_json(self) -> bytes:
        return encode_json(self.to_dict())

    @property
    def raw(self) -> bytes | None:
        """The bytes this document was parsed from, if it was parsed from bytes."""
        return self._raw

    def changed(self) -> bool:
        return self._raw is None or self._snapshot != self.to_dict()

    def to_bytes(self) -> bytes:
        """The original bytes when nothing changed since parsing, else the canonical ``to_json()``."""
        if self._raw is not None and not self.changed():
            return self._raw
        return self.to_json()


@dataclass(eq=False)
class Manifest(_Document):
    """An image manifest (OCI or Docker schema2)."""

    config: Descriptor
    layers: list[Descriptor]
    media_type: str | None = mt.OCI_MANIFEST
    schema_version: int = 2
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: bytes | Mapping[str, Any], media_type: str | None = None) -> Manifest:
        obj = _load(data, "manifest")
        _check_schema1(obj, media_type, "manifest")
        kind = _kind(obj, media_type)
        if kind in mt.INDEXES or (kind is None and "manifests" in obj):
            raise ConversionError("invalid manifest: expected an image manifest, got an image index")
        if kind is not None and kind not in mt.MANIFESTS:
            raise UnsupportedError(f"unsupported manifest media type {kind!r}")
        if obj.get("schemaVersion") != 2:
            raise ConversionError(
                f"invalid manifest: schemaVersion must be 2, got {obj.get('schemaVersion')!r}"
            )
        if "config" not in obj:
            raise ConversionError("invalid manifest: missing config")
        layers = obj.get("layers")
        if layers is None:
            layers = []
        if not isinstance(layers, list):
            raise ConversionError("invalid manifest: layers must be a list")
        manifest = cls(
            config=Descriptor.from_dict(obj["config"], "manifest config"),
            layers=[Descriptor.from_dict(d, f"manifest layers[{i}]") for i, d in enumerate(layers)],
            media_type=_opt_str(obj.get("mediaType"), "manifest mediaType"),
            schema_version=2,
            annotations=_string_map(obj.get("annotations"), "manifest"),
            subject=Descriptor.from_dict(obj["subject"], "manifest subject") if obj.get("subject") else None,
            artifact_type=_opt_str(obj.get("artifactType"), "manifest artifactType"),
            extra={k: v for k, v in obj.items() if k not in _MANIFEST_KEYS},
        )
        manifest._remember(data)
        return manifest

    def to_dict(self) -> dict[str, Any]:
        return self._encode({"config": self.config.to_dict(), "layers": [d.to_dict() for d in self.layers]})

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST

    def descriptor(self, **fields: Any) -> Descriptor:
        """The descriptor of ``to_bytes()``; ``fields`` (platform, annotations...) are passed through."""
        return Descriptor.of(self.to_bytes(), self.media_type or mt.OCI_MANIFEST, **fields)


@dataclass(eq=False)
class Index(_Document):
    """An image index (OCI index or Docker manifest list)."""

    manifests: list[Descriptor]
    media_type: str | None = mt.OCI_INDEX
    schema_version: int = 2
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: bytes | Mapping[str, Any], media_type: str | None = None) -> Index:
        obj = _load(data, "index")
        _check_schema1(obj, media_type, "index")
        kind = _kind(obj, media_type)
        if kind in mt.MANIFESTS or (kind is None and "manifests" not in obj and "layers" in obj):
            raise ConversionError("invalid index: expected an image index, got an image manifest")
        if kind is not None and kind not in mt.INDEXES:
            raise UnsupportedError(f"unsupported index media type {kind!r}")
        if obj.get("schemaVersion") != 2:
            raise ConversionError(f"invalid index: schemaVersion must be 2, got {obj.get('schemaVersion')!r}")
        manifests = obj.get("manifests")
        if manifests is None:
            manifests = []
        if not isinstance(manifests, list):
            raise ConversionError("invalid index: manifests must be a list")
        index = cls(
            manifests=[Descriptor.from_dict(d, f"index manifests[{i}]") for i, d in enumerate(manifests)],
            media_type=_opt_str(obj.get("mediaType"), "index mediaType"),
            schema_version=2,
            annotations=_string_map(obj.get("annotations"), "index"),
            subject=Descriptor.from_dict(obj["subject"], "index subject") if obj.get("subject") else None,
            artifact_type=_opt_str(obj.get("artifactType"), "index artifactType"),
            extra={k: v for k, v in obj.items() if k not in _INDEX_KEYS},
        )
        index._remember(data)
        return index

    def to_dict(self) -> dict[str, Any]:
        return self._encode({"manifests": [d.to_dict() for d in self.manifests]})

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST_LIST

    def descriptor(self, **fields: Any) -> Descriptor:
        return Descriptor.of(self.to_bytes(), self.media_type or mt.OCI_INDEX, **fields)


def parse_manifest(data: bytes | Mapping[str, Any], media_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or an index, deciding by the document's ``mediaType``, then ``media_type`` (the
    HTTP Content-Type), then its shape."""
    obj = _load(data, "manifest")
    _check_schema1(obj, media_type, "manifest")
    kind = _kind(obj, media_type)
    if kind in mt.INDEXES or (kind not in mt.MANIFESTS and "manifests" in obj):
        return Index.from_json(data if not isinstance(data, Mapping) else obj, media_type)
    if kind in mt.MANIFESTS or (kind is None and "config" in obj):
        return Manifest.from_json(data if not isinstance(data, Mapping) else obj, media_type)
    raise UnsupportedError(f"unsupported manifest media type {kind!r}")


class ImageConfig:
    """An image config (OCI or Docker) as its JSON object, with helpers for the fields we change.

    Unknown fields are kept as they are; ``to_json`` keeps the original key order (the config has too many
    fields to model), ``to_bytes`` returns the parsed bytes while nothing changed.
    """

    def __init__(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        self.data = data
        self._raw = raw
        self._snapshot = copy.deepcopy(data) if raw is not None else None

    @classmethod
    def from_json(cls, data: bytes | Mapping[str, Any]) -> ImageConfig:
        obj = _load(data, "image config")
        rootfs = obj.get("rootfs")
        if rootfs is not None:
            if not isinstance(rootfs, dict):
                raise ConversionError("invalid image config: rootfs must be an object")
            diff_ids = rootfs.get("diff_ids") or []
            if not isinstance(diff_ids, list) or not all(
                isinstance(d, str) and _digest.is_digest(d) for d in diff_ids
            ):
                raise ConversionError("invalid image config: rootfs.diff_ids must be a list of digests")
        history = obj.get("history")
        if history is not None and not (
            isinstance(history, list) and all(isinstance(h, dict) for h in history)
        ):
            raise ConversionError("invalid image config: history must be a list of objects")
        return cls(obj, bytes(data) if not isinstance(data, Mapping) else None)

    def to_json(self) -> bytes:
        return encode_json(self.data)

    def changed(self) -> bool:
        return self._raw is None or self._snapshot != self.data

    def to_bytes(self) -> bytes:
        if self._raw is not None and not self.changed():
            return self._raw
        return self.to_json()

    def descriptor(self, media_type: str = mt.OCI_CONFIG) -> Descriptor:
        return Descriptor.of(self.to_bytes(), media_type)

    @property
    def os(self) -> str:
        return str(self.data.get("os", ""))

    @property
    def architecture(self) -> str:
        return str(self.data.get("architecture", ""))

    def platform(self) -> Platform:
        return Platform(
            self.os,
            self.architecture,
            self.data.get("variant") or None,
            self.data.get("os.version") or None,
            tuple(self.data.get("os.features") or ()),
        )

    @property
    def diff_ids(self) -> list[str]:
        rootfs = self.data.get("rootfs") or {}
        return list(rootfs.get("diff_ids") or [])

    @diff_ids.setter
    def diff_ids(self, value: list[str]) -> None:
        for d in value:
            _digest.validate(d)
        rootfs = self.data.setdefault("rootfs", {})
        rootfs.setdefault("type", "layers")
        rootfs["diff_ids"] = list(value)

    def replace_diff_id(self, index: int, diff_id: str) -> None:
        ids = self.diff_ids
        ids[index] = diff_id
        self.diff_ids = ids

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.data.get("history") or [])

    @history.setter
    def history(self, value: list[dict[str, Any]]) -> None:
        if value:
            self.data["history"] = list(value)
        else:
            self.data.pop("history", None)

    def layer_history(self) -> list[dict[str, Any] | None]:
        """For each layer (in diff_ids order) its history entry, or None when history does not say."""
        entries = [h for h in self.history if not h.get("empty_layer")]
        out: list[dict[str, Any] | None] = list(entries[: len(self.diff_ids)])
        return out + [None] * (len(self.diff_ids) - len(out))

    def append_layer(self, diff_id: str, history: dict[str, Any] | None = None) -> None:
        """Add a layer's diff_id, with a history entry when the config keeps history."""
        self.diff_ids = [*self.diff_ids, diff_id]
        if history is not None:
            self.history = [*self.history, history]

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.data.get("config") or {}).get("Labels") or {})

    def set_label(self, key: str, value: str | None) -> None:
        """Set (or remove, with None) a label in ``config.Labels``."""
        cfg = self.data.setdefault("config", {})
        labels = dict(cfg.get("Labels") or {})
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
        cfg["Labels"] = labels or None
        if not labels:
            cfg.pop("Labels")
