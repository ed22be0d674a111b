"""Annotation keys we write, and how we recognise images that are already accelerated.

Our own keys reuse the namespace of the Harbor annotations upstream once wrote
(``io.goharbor.artifact.v1alpha1.acceleration.*``), so tools that knew them still do.
"""

from __future__ import annotations

from typing import Final

from accel.oci import mediatypes as mt
from accel.oci.manifest import Index, Manifest

DRIVER_NAME: Final = "io.goharbor.artifact.v1alpha1.acceleration.driver.name"
DRIVER_VERSION: Final = "io.goharbor.artifact.v1alpha1.acceleration.driver.version"
DRIVER_OPTIONS: Final = "io.goharbor.artifact.v1alpha1.acceleration.driver.options"
SOURCE_DIGEST: Final = "io.goharbor.artifact.v1alpha1.acceleration.source.digest"
SOURCE_REFERENCE: Final = "io.goharbor.artifact.v1alpha1.acceleration.source.reference"

NYDUS_SOURCE_DIGEST: Final = "containerd.io/snapshot/nydus-source-digest"
NYDUS_BOOTSTRAP: Final = "containerd.io/snapshot/nydus-bootstrap"
NYDUS_BLOB: Final = "containerd.io/snapshot/nydus-blob"
NYDUS_EMPTY_LAYER: Final = "containerd.io/snapshot/nydus-empty-layer"
NYDUS_REF: Final = "containerd.io/snapshot/nydus-ref"
STARGZ_TOC_DIGEST: Final = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_CHUNKED_KEYS: Final = (
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
)
SOCI_INDEX_DIGEST: Final = "com.amazon.soci.index-digest"
SOCI_IMAGE_MANIFEST_DIGEST: Final = "com.amazon.soci.image-manifest-digest"

_ACCELERATED_ARTIFACTS: Final = frozenset({mt.NYDUS_ARTIFACT, mt.SOCI_INDEX_V1, mt.SOCI_INDEX_V2})
_MARKER_KEYS: Final = (SOURCE_DIGEST, NYDUS_SOURCE_DIGEST)
_LAYER_KEYS: Final = (NYDUS_BOOTSTRAP, NYDUS_BLOB, STARGZ_TOC_DIGEST, *ZSTD_CHUNKED_KEYS)


def accelerated_reason(document: Manifest | Index) -> str | None:
    """Why ``document`` is already an accelerated image or an artifact we must not convert, else None."""
    for key in _MARKER_KEYS:
        if key in document.annotations:
            return f"already converted (annotation {key})"
    if document.subject is not None:
        return "it refers to another manifest (subject): an accessory or referrer, not an image"
    if document.artifact_type:
        return f"it is an artifact of type {document.artifact_type}"
    if isinstance(document, Index):
        for entry in document.manifests:
            if entry.artifact_type in _ACCELERATED_ARTIFACTS:
                return f"its index lists a {entry.artifact_type} entry"
            if SOCI_INDEX_DIGEST in entry.annotations or SOCI_IMAGE_MANIFEST_DIGEST in entry.annotations:
                return "it is a SOCI-enabled index"
        return None
    if document.config.media_type not in mt.CONFIGS:
        return f"its config is {document.config.media_type}, not an image config"
    if document.layers and document.layers[-1].media_type == mt.NYDUS_BLOB:
        return "it is a Nydus image"
    for layer in document.layers:
        for key in _LAYER_KEYS:
            if key in layer.annotations:
                return f"its layers are already accelerated (annotation {key})"
    return None
