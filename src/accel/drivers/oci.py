"""The ``oci`` driver: Docker schema2 images become OCI images with their layers unchanged.

No layer is read: the layers keep their digests and are mounted (or found) in the target repository,
only media types change. It proves the pipeline end to end before any format driver is involved, and is
useful on its own for registries and tools that only accept OCI media types.
"""

from __future__ import annotations

from accel.drivers.base import ConvertedImage, Driver, DriverContext, SourceImage, check_known_options
from accel.oci import mediatypes as mt
from accel.oci.manifest import Manifest


class OCIDriver(Driver):
    name = "oci"
    version = "1"

    def __init__(self, options: dict[str, str]) -> None:
        super().__init__(options)
        check_known_options(options, (), self.name)

    def convert(self, image: SourceImage, ctx: DriverContext) -> ConvertedImage:
        source = image.manifest
        manifest = Manifest(
            config=source.config.replace(media_type=mt.to_oci(source.config.media_type)),
            layers=[layer.replace(media_type=mt.to_oci(layer.media_type)) for layer in source.layers],
            media_type=mt.OCI_MANIFEST,
            annotations={**source.annotations, **image.annotations},
        )
        return ConvertedImage(manifest=manifest)
