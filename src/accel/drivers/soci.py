"""The ``soci`` driver: SOCI indexes (zTOCs) for soci-snapshotter; the image's layers stay untouched.

``index_version: v2`` (default, what soci-snapshotter reads by default since v0.10): the "SOCI-enabled
image" — every selected platform manifest rewritten to OCI media types and annotated with
``com.amazon.soci.index-digest``, listed in an OCI index beside its SOCI index (artifact type, platform,
``com.amazon.soci.image-manifest-digest``), pushed under the rule's tag suffix. New digests, new tag.

``index_version: v1``: one SOCI index per platform manifest with a ``subject`` pointing at it, pushed as a
referrer (and listed in the ``sha256-<hex>`` fallback tag where the registry has no referrers API). The
image itself is not changed and no tag moves; the index goes to the source repository.

Options: ``index_version`` (v2, v1), ``span_size`` (4 MiB), ``min_layer_size`` (10 MiB; smaller layers
are pulled eagerly), ``build_tool_identifier``. Every layer that gets no zTOC is reported with its reason;
an image where no layer can be indexed fails (soci refuses empty indexes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from accel import __version__
from accel.drivers.base import (
    Artifact,
    ConvertedImage,
    Driver,
    DriverContext,
    SourceImage,
    check_known_options,
    choice_option,
    int_option,
)
from accel.errors import ConversionError, FormatError
from accel.formats import soci
from accel.oci.manifest import Descriptor

_OPTIONS = ("index_version", "span_size", "min_layer_size", "build_tool_identifier")


class SociDriver(Driver):
    name = "soci"
    version = "1"

    def __init__(self, options: Mapping[str, str]) -> None:
        super().__init__(options)
        check_known_options(options, _OPTIONS, self.name)
        self.index_version = 2 if choice_option(options, "index_version", ("v2", "v1"), "v2") == "v2" else 1
        self.span_size = int_option(options, "span_size", soci.DEFAULT_SPAN_SIZE, minimum=1 << 16)
        self.min_layer_size = int_option(options, "min_layer_size", soci.DEFAULT_MIN_LAYER_SIZE)
        self.build_tool = options.get("build_tool_identifier") or f"acceleration-service {__version__}"

    def output_options(self) -> Mapping[str, Any]:
        return {
            "index_version": f"v{self.index_version}",
            "span_size": self.span_size,
            "min_layer_size": self.min_layer_size,
            "build_tool_identifier": self.build_tool,
        }

    def convert(self, image: SourceImage, ctx: DriverContext) -> ConvertedImage:
        plans = soci.plan_layers(image.manifest.layers, min_layer_size=self.min_layer_size)
        for plan in plans:
            if plan.skip_reason:
                digest = image.manifest.layers[plan.index].digest
                ctx.note(f"layer {digest}: not indexed: {plan.skip_reason} (pulled eagerly)")
        wanted = [(image.manifest.layers[p.index], p.compression) for p in plans if p.compression]
        ztocs = [z for z in ctx.map(lambda item: self._ztoc(*item, ctx), wanted) if z]
        if not ztocs:
            raise ConversionError(
                f"{image.reference}: no layer can be indexed (SOCI refuses an empty index); see the notes"
            )
        ctx.put_blob(soci.EMPTY_CONFIG)
        if self.index_version == 1:
            index = soci.soci_index_manifest(
                ztocs, version=1, subject=image.descriptor(), build_tool_identifier=self.build_tool
            )
            return ConvertedImage(manifest=image.manifest, artifacts=[Artifact(index)], unchanged=True)

        index = soci.soci_index_manifest(ztocs, version=2, build_tool_identifier=self.build_tool)
        # The converter's marks go on the rewritten manifest before its digest is taken.
        enabled = soci.convert_manifest(
            image.manifest, index.descriptor().digest, annotations=image.annotations
        )
        entry = soci.soci_index_descriptor(
            index, version=2, platform=image.platform, image_manifest_digest=enabled.descriptor().digest
        )
        return ConvertedImage(manifest=enabled, artifacts=[Artifact(index, index_entry=entry)])

    def _ztoc(self, layer: Descriptor, kind: str, ctx: DriverContext) -> Descriptor | None:
        ctx.check_canceled()
        try:
            with ctx.open_layer(layer) as blob:
                ztoc = soci.build_ztoc(
                    blob, span_size=self.span_size, compression=kind, build_tool_identifier=self.build_tool
                )
        except FormatError as exc:
            # Tar types soci cannot carry (sparse files, global PAX headers) leave the layer eager.
            ctx.note(f"layer {layer.digest}: not indexed: {exc}")
            return None
        data = ztoc.to_bytes()
        digest = ctx.put_blob(data)
        ctx.advance("convert", ztoc.uncompressed_archive_size)
        return soci.ztoc_descriptor(
            digest,
            len(data),
            layer_digest=layer.digest,
            layer_media_type=layer.media_type,
            span_size=self.span_size,
        )
