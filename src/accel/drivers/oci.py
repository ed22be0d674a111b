"""The ``oci`` driver: Docker schema2 images become OCI images with their layers unchanged.

No layer is read: the layers keep their digests and are mounted (or found) in the target repository,
only media types change. It proves the pipeline end to end before any format driver is involved, and is
useful on its own for registries and tools that only accept OCI media types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from accel.drivers.base import (
    ConvertedImage,
    ConvertedLayer,
    DriverContext,
    ImageLayer,
    PlainDriver,
    SourceImage,
    check_known_options,
)
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, Manifest


class OCIDriver(PlainDriver):
    name = "oci"
    version = "1"
    tag_suffix = "-oci"
    caches_layers = False

    def __init__(self, options: Mapping[str, str]) -> None:
        super().__init__(options)
        check_known_options(options, (), self.name)

    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[None]:
        return ConvertedLayer(layer.replace(media_type=mt.to_oci(layer.media_type)), diff_id, None)

    def finish_image(
        self,
        image: SourceImage,
        layers: Sequence[ConvertedLayer[None]],
        appended: Sequence[ImageLayer],
        ctx: DriverContext,
    ) -> ConvertedImage:
        # The config is kept byte for byte (its digest with it): only the manifest's media types change.
        source = image.manifest
        manifest = Manifest(
            config=source.config.replace(media_type=mt.to_oci(source.config.media_type)),
            layers=[layer.descriptor for layer in layers],
            media_type=mt.OCI_MANIFEST,
            annotations={**source.annotations, **image.annotations},
        )
        return ConvertedImage(manifest=manifest)
