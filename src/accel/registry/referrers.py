"""OCI 1.1 referrers: the API's answer, and the ``<alg>-<hex>`` tag schema of registries without it."""

from __future__ import annotations

from typing import Any

from accel.oci import digest as digests
from accel.oci.mediatypes import OCI_INDEX


def fallback_tag(subject_digest: str) -> str:
    """The referrers tag schema's tag for a subject: ``sha256-<hex>`` (algorithm ≤ 32 chars, hex ≤ 64)."""
    algorithm, hexpart = digests.validate(subject_digest).split(":", 1)
    return f"{algorithm[:32]}-{hexpart[:64]}"


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def filter_by_artifact_type(index: dict[str, Any], artifact_type: str | None) -> dict[str, Any]:
    """Keep only descriptors of ``artifact_type`` (servers may ignore the filter; tags never apply it)."""
    if artifact_type is None:
        return index
    manifests = [m for m in index.get("manifests", []) if m.get("artifactType") == artifact_type]
    return {**index, "manifests": manifests}


def with_referrer(index: dict[str, Any] | None, descriptor: dict[str, Any]) -> dict[str, Any]:
    """A fallback tag index with ``descriptor`` added (replacing an entry with the same digest)."""
    base = index if index is not None else empty_index()
    manifests = [m for m in base.get("manifests", []) if m.get("digest") != descriptor["digest"]]
    manifests.append(descriptor)
    return {**base, "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
