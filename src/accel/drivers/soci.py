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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accel import __version__
from accel.drivers.base import (
    Artifact,
    ConvertedImage,
    ConvertedLayer,
    Driver,
    DriverContext,
    ImageLayer,
    ReadAt,
    SourceImage,
    check_known_options,
    choice_option,
    int_option,
)
from accel.errors import ConversionError, FormatError
from accel.formats import soci
from accel.oci.manifest import Descriptor

_OPTIONS = ("index_version", "span_size", "min_layer_size", "build_tool_identifier")


@dataclass(frozen=True)
class IndexedLayer:
    """A layer's extra: the descriptor of its zTOC, or why the layer stays eager."""

    ztoc: Descriptor | None
    skipped: str = ""


class SociDriver(Driver[IndexedLayer]):
    name = "soci"
    version = "1"
    tag_suffix = "-soci"
    # The layer is kept as it is and its zTOC is a second blob, which the layer cache cannot record.
    caches_layers = False

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

    def convert_layer(
        self, layer: Descriptor, diff_id: str, ctx: DriverContext
    ) -> ConvertedLayer[IndexedLayer]:
        (plan,) = soci.plan_layers([layer], min_layer_size=self.min_layer_size)
        if plan.compression is None:
            reason = plan.skip_reason or "cannot be indexed"
            if layer.size < self.min_layer_size:
                # soci's words name its CLI flag; the user changes our option.
                reason += f" (driver option min_layer_size is {self.min_layer_size})"
            indexed = IndexedLayer(None, f"layer {layer.digest}: not indexed: {reason} (pulled eagerly)")
        else:
            indexed = self._ztoc(layer, plan.compression, ctx)
        if indexed.skipped:
            ctx.note(indexed.skipped)
        return ConvertedLayer(layer, diff_id, indexed)

    def encode_extra(self, extra: IndexedLayer) -> bytes:
        ztoc = extra.ztoc.to_dict() if extra.ztoc else None
        return json.dumps({"ztoc": ztoc, "skipped": extra.skipped}).encode()

    def decode_extra(self, data: bytes) -> IndexedLayer:
        record = json.loads(data)
        ztoc = Descriptor.from_dict(record["ztoc"]) if record["ztoc"] else None
        return IndexedLayer(ztoc, record["skipped"])

    def recover_extra(self, descriptor: Descriptor, read_at: ReadAt) -> IndexedLayer:
        raise ConversionError("a SOCI layer's zTOC is not part of the layer blob and cannot be recovered")

    def finish_image(
        self,
        image: SourceImage,
        layers: Sequence[ConvertedLayer[IndexedLayer]],
        appended: Sequence[ImageLayer],
        ctx: DriverContext,
    ) -> ConvertedImage:
        ztocs = [layer.extra.ztoc for layer in layers if layer.extra.ztoc is not None]
        if not ztocs:
            skipped = [layer.extra.skipped for layer in layers]
            raise ConversionError(
                f"{image.reference}: no layer can be indexed (SOCI refuses an empty index): "
                + "; ".join(skipped),
                notes=skipped,
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

    def _ztoc(self, layer: Descriptor, kind: str, ctx: DriverContext) -> IndexedLayer:
        try:
            with ctx.open_layer(layer) as blob:
                ztoc = soci.build_ztoc(
                    blob, span_size=self.span_size, compression=kind, build_tool_identifier=self.build_tool
                )
        except FormatError as exc:
            # Tar types soci cannot carry (sparse files, global PAX headers) leave the layer eager.
            return IndexedLayer(None, f"layer {layer.digest}: not indexed: {exc}")
        data = ztoc.to_bytes()
        digest = ctx.put_blob(data)
        ctx.advance(ztoc.uncompressed_archive_size)
        descriptor = soci.ztoc_descriptor(
            digest,
            len(data),
            layer_digest=layer.digest,
            layer_media_type=layer.media_type,
            span_size=self.span_size,
        )
        return IndexedLayer(descriptor)
