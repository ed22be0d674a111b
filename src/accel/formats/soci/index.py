"""SOCI index manifests (v1 and v2), the v2 "SOCI-enabled image" rewrite and the referrers listing.

Pure functions on :mod:`accel.oci.manifest`'s typed documents; nothing here talks to a registry. Their
``to_json()`` is what Go's ``encoding/json`` writes for the ``ocispec`` structs soci marshals (compact,
struct field order, sorted map keys, ``<``/``>``/``&`` escaped), so equal inputs give soci's digests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def ztoc_descriptor(
    ztoc_digest: str,
    ztoc_size: int,
    *,
    layer_digest: str,
    layer_media_type: str,
    span_size: int,
    disable_xattrs: bool = False,
) -> Descriptor:
    """The zTOC blob descriptor of an index's ``layers[]``."""
    annotations = {
        ANNOTATION_LAYER_DIGEST: layer_digest,
        ANNOTATION_LAYER_MEDIA_TYPE: layer_media_type,
        ANNOTATION_SPAN_SIZE: str(span_size),
    }
    if disable_xattrs:
        annotations[ANNOTATION_DISABLE_XATTRS] = "true"
    return Descriptor(ZTOC_MEDIA_TYPE, ztoc_digest, ztoc_size, annotations=annotations)


def soci_index_manifest(
    blobs: Sequence[Descriptor],
    *,
    version: int = 2,
    subject: Descriptor | None = None,
    build_tool_identifier: str | None = None,
) -> Manifest:
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
    return Manifest(
        config=Descriptor(config_type, EMPTY_CONFIG_DIGEST, len(EMPTY_CONFIG)),
        layers=list(blobs),
        media_type=mediatypes.OCI_MANIFEST,
        subject=subject,
        annotations={ANNOTATION_BUILD_TOOL: build_tool_identifier} if build_tool_identifier else {},
    )


def soci_index_descriptor(
    index: Manifest,
    *,
    version: int = 2,
    platform: Platform | None = None,
    image_manifest_digest: str | None = None,
) -> Descriptor:
    """Descriptor of a SOCI index: with ``artifactType``; the index's annotations for a v1 referrers
    listing, or the ``image-manifest-digest`` back-annotation and platform for a v2 OCI index entry."""
    if image_manifest_digest is not None:
        annotations = {ANNOTATION_IMAGE_MANIFEST_DIGEST: image_manifest_digest}
    else:
        annotations = dict(index.annotations)
    return index.descriptor(
        annotations=annotations,
        platform=platform,
        artifact_type=INDEX_V1 if version == 1 else INDEX_V2,
    )


def referrers_index(referrers: Sequence[Descriptor]) -> Index:
    """The referrers API answer / ``sha256-<hex>`` fallback tag index listing these descriptors."""
    return Index(manifests=list(referrers))


def convert_manifest(
    manifest: Manifest, soci_index_digest: str | None, *, annotations: Mapping[str, str] | None = None
) -> Manifest:
    """soci ``Convert``'s rewrite of an image manifest (``annotateImages`` in soci-snapshotter's
    ``soci/soci_convert.go``): OCI media types for the manifest and its config, re-marshalled as Go's
    ``ocispec.Manifest`` (fields it does not model are dropped), with ``com.amazon.soci.index-digest``
    when this platform got a SOCI index. ``annotations`` are added to the manifest's own (the converter's
    marks)."""
    merged = {**manifest.annotations, **(annotations or {})}
    if soci_index_digest is not None:
        merged[ANNOTATION_INDEX_DIGEST] = soci_index_digest
    return Manifest(
        config=_known_fields(manifest.config).replace(media_type=mediatypes.OCI_CONFIG),
        layers=[_known_fields(layer) for layer in manifest.layers],
        media_type=mediatypes.OCI_MANIFEST,
        schema_version=manifest.schema_version,
        annotations=merged,
        subject=_known_fields(manifest.subject) if manifest.subject else None,
        artifact_type=manifest.artifact_type,
    )


def _known_fields(desc: Descriptor) -> Descriptor:
    # Go's ocispec structs drop what they do not model when soci re-marshals.
    return desc.replace(extra={})


def soci_enabled_index(
    manifests: Sequence[tuple[Manifest, Platform | None]],
    soci_indexes: Sequence[Descriptor],
    *,
    annotations: Mapping[str, str] | None = None,
) -> Index:
    """The v2 "SOCI-enabled image": the converted manifests (from :func:`convert_manifest`, with their
    platform), each listed with its own annotations, then the SOCI index descriptors
    (:func:`soci_index_descriptor` with ``image_manifest_digest``), appended after all of them as soci's
    ``addSociIndexes`` does."""
    entries = [
        manifest.descriptor(annotations=dict(manifest.annotations), platform=platform)
        for manifest, platform in manifests
    ]
    return Index(manifests=[*entries, *soci_indexes], annotations=dict(annotations or {}))


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """What to do with one image layer: index it with ``compression``, or skip it for ``skip_reason``."""

    index: int
    descriptor: Descriptor
    compression: str | None
    skip_reason: str | None


def plan_layers(layers: Sequence[Descriptor], *, min_layer_size: int = 10 << 20) -> list[LayerPlan]:
    """soci's layer selection, in image layer order: layers under ``min_layer_size`` bytes are skipped
    first (``desc.Size < minLayerSize``), then those SOCI cannot index (zstd, non-tar media types)."""
    plans = []
    for i, desc in enumerate(layers):
        size, media_type = desc.size, desc.media_type
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
