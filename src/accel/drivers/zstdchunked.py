"""The ``zstdchunked`` driver: zstd:chunked layers, by default in the containers/storage flavour.

The storage flavour (podman, CRI-O, buildah partial pulls) keeps the original tar bytes, so diff_ids do
not change; ``flavour: stargz`` writes stargz-snapshotter's flavour (what upstream's estargz driver
produced with ``compression: zstdchunked``). Options: ``flavour``, ``compression_level`` (3),
``chunk_size``, ``threads``, ``prioritized_files`` (stargz flavour only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from accel.drivers.base import (
    ConvertedLayer,
    DriverContext,
    PlainDriver,
    bool_option,
    check_known_options,
    choice_option,
    int_option,
    list_option,
)
from accel.errors import ConfigError
from accel.formats import zstdchunked
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor

_OPTIONS = (
    "flavour",
    "compression",
    "compression_level",
    "chunk_size",
    "threads",
    "prioritized_files",
    "docker2oci",
)
_FLAVOURS: tuple[zstdchunked.Flavour, ...] = ("storage", "stargz")


class ZstdChunkedDriver(PlainDriver):
    name = "zstdchunked"
    version = "1"
    tag_suffix = "-zstdchunked"

    def __init__(
        self, options: Mapping[str, str], *, default_flavour: zstdchunked.Flavour = "storage"
    ) -> None:
        super().__init__(options)
        check_known_options(options, _OPTIONS, self.name)
        bool_option(options, "docker2oci")
        flavour = choice_option(options, "flavour", _FLAVOURS, default_flavour)
        prioritized = list_option(options, "prioritized_files")
        if prioritized and flavour != "stargz":
            raise ConfigError(
                "converter.driver.config.prioritized_files: only the stargz flavour orders files"
            )
        level = options.get("compression_level")
        chunk = options.get("chunk_size")
        size = int_option(options, "chunk_size", 1, minimum=2) if chunk else None
        # containers/storage splits where the rolling sum's low bits are all ones: a power of two.
        if size is not None and flavour == "storage" and (size & (size - 1) or size > 1 << 20):
            raise ConfigError(
                f"converter.driver.config.chunk_size: the storage flavour needs a power of two up to 1 MiB "
                f"(the average chunk size), got {size}"
            )
        self.build_options = zstdchunked.ZstdChunkedOptions(
            flavour=flavour,
            level=int_option(options, "compression_level", 3) if level else None,
            chunk_size=size,
            threads=int_option(options, "threads", 0),
            prioritized_files=prioritized,
        )

    def output_options(self) -> Mapping[str, Any]:
        o = self.build_options
        return {
            "flavour": o.flavour,
            "level": o.level,
            "chunk_size": o.chunk_size,
            "prioritized_files": "|".join(o.prioritized_files),
        }

    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[None]:
        options = self.build_options
        if options.tmpdir is None:
            options = replace(options, tmpdir=ctx.scratch_dir)
        with ctx.open_layer(layer) as blob, ctx.new_blob() as sink:
            result = zstdchunked.build(blob, sink, options)
            digest, size = sink.commit()
        ctx.advance(result.uncompressed_size)
        annotations = {**layer.annotations, **result.annotations}
        return ConvertedLayer(
            Descriptor(mt.OCI_LAYER_ZSTD, digest, size, annotations=annotations), result.diff_id, None
        )
