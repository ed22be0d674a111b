"""SOCI index manifests (v1 and v2), the v2 "SOCI-enabled image" rewrite and the referrers listing.

Pure functions from descriptors to bytes; nothing here talks to a registry. JSON is written the way Go's
``encoding/json`` writes the ``ocispec`` structs soci marshals (compact, struct field order, sorted map keys,
``<``/``>``/``&`` escaped), so equal inputs give soci's digests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accel.errors import FormatError
from accel.formats.soci.toc import FileMetadata
from accel.oci import mediatypes
from accel.oci.manifest import Descriptor, Index, Manifest
from accel.oci.platform import Platform

INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
PREFETCH_MEDIA_TYPE = "application/vnd.amazon.soci.prefetch.v1+json"
ZTOC_MEDIA_TYPE = "application/octet-stream"
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ANNOTATION_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
ANNOTATION_LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
ANNOTATION_SPAN_SIZE = "com.amazon.soci.span-size"
ANNOTATION_DISABLE_XATTRS = "com.amazon.soci.disable-xattrs"
ANNOTATION_BUILD_TOOL = "com.amazon.soci.build-tool-identifier"
ANNOTATION_INDEX_DIGEST = "com.amazon.soci.index-digest"
ANNOTATION_IMAGE_MANIFEST_DIGEST = "com.amazon.soci.image-manifest-digest"


def descriptor(desc: Mapping[str, Any]) -> dict[str, Any]:
    """An OCI descriptor as Go writes it (struct field order, sorted annotations, ordered platform)."""
    return Descriptor.from_dict(dict(desc)).to_dict()


def ztoc_descriptor(
    ztoc_digest: str,
    ztoc_size: int,
    *,
    layer_digest: str,
    layer_media_type: str,
    span_size: int,
    disable_xattrs: bool = False,
) -> dict[str, Any]:
    """The zTOC blob descriptor of an index's ``layers[]``."""
    annotations = {
        ANNOTATION_LAYER_DIGEST: layer_digest,
        ANNOTATION_LAYER_MEDIA_TYPE: layer_media_type,
        ANNOTATION_SPAN_SIZE: str(span_size),
    }
    if disable_xattrs:
        annotations[ANNOTATION_DISABLE_XATTRS] = "true"
    return descriptor(
        {"mediaType": ZTOC_MEDIA_TYPE, "digest": ztoc_digest, "size": ztoc_size, "annotations": annotations}
    )


def soci_index_manifest(
    blobs: Sequence[Mapping[str, Any]],
    *,
    version: int = 2,
    subject: Mapping[str, Any] | None = None,
    build_tool_identifier: str | None = None,
) -> bytes:
    """The SOCI index (an OCI image manifest). ``blobs``: zTOC descriptors in image layer order, then any
    prefetch descriptors. v1 needs ``subject`` (the platform image manifest's descriptor); v2 has none."""
    if not blobs:
        raise FormatError("a SOCI index needs at least one zTOC (soci's ErrEmptyIndex)")
    if version == 1:
        if subject is None:
            raise FormatError("a SOCI v1 index needs the image manifest as its subject")
        config_type = INDEX_V1
    elif version == 2:
        if subject is not None:
            raise FormatError("a SOCI v2 index has no subject")
        config_type = INDEX_V2
    else:
        raise FormatError(f"unknown SOCI index version {version}")
    manifest = Manifest(
        config=Descriptor(config_type, EMPTY_CONFIG_DIGEST, len(EMPTY_CONFIG)),
        layers=[Descriptor.from_dict(dict(b)) for b in blobs],
        media_type=mediatypes.OCI_MANIFEST,
        subject=Descriptor.from_dict(dict(subject)) if subject is not None else None,
        annotations={ANNOTATION_BUILD_TOOL: build_tool_identifier} if build_tool_identifier else {},
    )
    return manifest.to_json()


def soci_index_descriptor(
    index: bytes,
    *,
    version: int = 2,
    platform: Mapping[str, Any] | None = None,
    image_manifest_digest: str | None = None,
) -> dict[str, Any]:
    """Descriptor of a SOCI index: with ``artifactType``; the index's annotations for a v1 referrers
    listing, or the ``image-manifest-digest`` back-annotation and platform for a v2 OCI index entry."""
    if image_manifest_digest is not None:
        annotations = {ANNOTATION_IMAGE_MANIFEST_DIGEST: image_manifest_digest}
    else:
        annotations = dict(Manifest.from_json(index).annotations)
    return Descriptor.of(
        index,
        mediatypes.OCI_MANIFEST,
        annotations=annotations,
        platform=Platform.from_dict(platform) if platform is not None else None,
        artifact_type=INDEX_V1 if version == 1 else INDEX_V2,
    ).to_dict()


def referrers_index(referrers: Sequence[Mapping[str, Any]]) -> bytes:
    """The referrers API answer / ``sha256-<hex>`` fallback tag index listing these descriptors."""
    return Index(manifests=[Descriptor.from_dict(dict(r)) for r in referrers]).to_json()


def convert_manifest(manifest: bytes | Mapping[str, Any], soci_index_digest: str | None) -> bytes:
    """soci ``Convert``'s rewrite of an image manifest: OCI media types, re-marshalled (unknown fields are
    dropped), with ``com.amazon.soci.index-digest`` when this platform got a SOCI index."""
    source = Manifest.from_json(manifest if isinstance(manifest, bytes | bytearray) else dict(manifest))
    annotations = dict(source.annotations)
    if soci_index_digest is not None:
        annotations[ANNOTATION_INDEX_DIGEST] = soci_index_digest
    converted = Manifest(
        config=_known_fields(source.config).replace(media_type=mediatypes.OCI_CONFIG),
        layers=[_known_fields(layer) for layer in source.layers],
        media_type=mediatypes.OCI_MANIFEST,
        schema_version=source.schema_version,
        annotations=annotations,
        subject=_known_fields(source.subject) if source.subject else None,
        artifact_type=source.artifact_type,
    )
    return converted.to_json()


def _known_fields(desc: Descriptor) -> Descriptor:
    # Go's ocispec structs drop what they do not model when soci re-marshals.
    return desc.replace(extra={})


def soci_enabled_index(
    manifests: Sequence[tuple[bytes, Mapping[str, Any] | None]],
    soci_indexes: Sequence[Mapping[str, Any]],
    *,
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The v2 "SOCI-enabled image": the converted manifests (bytes from :func:`convert_manifest` and their
    platform), each listed with its own annotations, then the SOCI index descriptors
    (:func:`soci_index_descriptor` with ``image_manifest_digest``)."""
    entries = []
    for body, platform in manifests:
        parsed = Manifest.from_json(body)
        entries.append(
            Descriptor.of(
                body,
                mediatypes.OCI_MANIFEST,
                annotations=dict(parsed.annotations),
                platform=Platform.from_dict(platform) if platform is not None else None,
            )
        )
    entries.extend(Descriptor.from_dict(dict(d)) for d in soci_indexes)
    return Index(manifests=entries, annotations=dict(annotations or {})).to_json()


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """What to do with one image layer: index it with ``compression``, or skip it for ``skip_reason``."""

    index: int
    descriptor: Mapping[str, Any]
    compression: str | None
    skip_reason: str | None


def plan_layers(layers: Sequence[Mapping[str, Any]], *, min_layer_size: int = 10 << 20) -> list[LayerPlan]:
    """soci's layer selection, in image layer order: layers under ``min_layer_size`` bytes are skipped
    first (``desc.Size < minLayerSize``), then those SOCI cannot index (zstd, non-tar media types)."""
    plans = []
    for i, desc in enumerate(layers):
        size, media_type = int(desc.get("size", 0)), str(desc.get("mediaType", ""))
        kind = layer_compression(media_type)
        reason = None
        if size < min_layer_size:
            reason = f"size {size} is less than min-layer-size {min_layer_size}"
        elif kind is None:
            if mediatypes.layer_compression(media_type) == "zstd":
                reason = "zstd layers cannot be indexed by SOCI (no zstd checkpoints; convert to gzip first)"
            else:
                reason = f"unsupported layer media type {media_type!r}"
        plans.append(LayerPlan(i, desc, None if reason else kind, reason))
    return plans


def should_disable_xattrs(toc: Sequence[FileMetadata]) -> bool:
    """soci's ``--optimizations xattr`` test: no entry has a ``SCHILY.xattr.*`` record (even an empty one)
    and none is an opaque-directory whiteout, so ``com.amazon.soci.disable-xattrs`` may be set."""
    for me in toc:
        if me.name.endswith(".wh..wh..opq") or any(k.startswith("SCHILY.xattr.") for k in me.pax_records):
            return False
    return True


def layer_compression(media_type: str) -> str | None:
    """soci's zinfo kind for a layer media type: ``"gzip"``, ``"uncompressed"``, or None when SOCI cannot
    index it (zstd: no checkpoint format exists, awslabs/soci-snapshotter#519; or not a tar layer)."""
    kind = mediatypes.layer_compression(media_type)
    if kind == "gzip":
        return "gzip"
    if kind == "none":
        return "uncompressed"
    return None
