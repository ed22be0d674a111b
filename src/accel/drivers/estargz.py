"""The ``estargz`` driver: every layer becomes an eStargz layer (gzip members, TOC, footer).

Options (``converter.driver.config``, strings as upstream): ``compression_level`` (default: the
reference's gzip level 9 size at a fraction of its time, see ``accel.formats.estargz``), ``chunk_size``
(4 MiB), ``min_chunk_size``, ``prioritized_files`` (landmark ordering), ``threads`` (compression threads
per layer; 0 = the cores), ``compressor`` (``libdeflate``, the default where the system library is
installed, else ``zlib-ng``; ``isal``, the fast setting). Upstream's
``compression: zstdchunked`` selects the zstd:chunked driver in the stargz-snapshotter flavour, which is
what upstream produced with it; ``docker2oci`` is accepted (output is always OCI).

Layers that already are eStargz (their TOC digest annotation and footer agree) are kept, as
``ctr-remote --reuse`` does.
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
from accel.formats import estargz
from accel.formats.chunked import Backend
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor

_OPTIONS = (
    "compression",
    "compression_level",
    "chunk_size",
    "min_chunk_size",
    "prioritized_files",
    "threads",
    "compressor",
    "docker2oci",
)
_COMPRESSORS: tuple[Backend, ...] = ("libdeflate", "zlib-ng", "isal")


class EStargzDriver(PlainDriver):
    name = "estargz"
    version = "1"
    tag_suffix = "-esgz"

    def __init__(self, options: Mapping[str, str]) -> None:
        super().__init__(options)
        check_known_options(options, _OPTIONS, self.name)
        bool_option(options, "docker2oci")
        choice_option(options, "compression", ("estargz", "zstdchunked"), "estargz")
        level = options.get("compression_level")
        backend = choice_option(options, "compressor", _COMPRESSORS, estargz.DEFAULT_BACKEND)
        self.build_options = estargz.BuildOptions(
            compression_level=int_option(options, "compression_level", 0) if level else None,
            chunk_size=int_option(options, "chunk_size", estargz.DEFAULT_CHUNK_SIZE, minimum=1),
            min_chunk_size=int_option(options, "min_chunk_size", 0),
            prioritized_files=list_option(options, "prioritized_files"),
            # Each layer holds some of the image's files: one missing from a layer is a note, as upstream.
            allow_prioritize_not_found=True,
            threads=int_option(options, "threads", 0),
            backend=backend,
        )

    def output_options(self) -> Mapping[str, Any]:
        o = self.build_options
        return {
            "compression_level": o.compression_level,
            "chunk_size": o.chunk_size,
            "min_chunk_size": o.min_chunk_size,
            "prioritized_files": "|".join(o.prioritized_files),
            "compressor": o.backend,
        }

    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[None]:
        with ctx.open_layer(layer) as blob:
            toc_digest = layer.annotations.get(estargz.TOC_DIGEST_ANNOTATION)
            if toc_digest and not self.build_options.prioritized_files and estargz.is_estargz(blob):
                ctx.note(f"layer {layer.digest}: already eStargz, kept")
                return ConvertedLayer(layer.replace(media_type=mt.to_oci(layer.media_type)), diff_id, None)
            blob.seek(0)
            options = self.build_options
            if options.tmpdir is None:
                options = replace(options, tmpdir=ctx.scratch_dir)
            with ctx.new_blob() as sink:
                result = estargz.build(blob, sink, options)
                digest, size = sink.commit()
        ctx.advance(result.uncompressed_size)
        if result.missed_prioritized:
            ctx.note(
                f"layer {layer.digest}: prioritized files not found: {', '.join(result.missed_prioritized)}"
            )
        annotations = {**layer.annotations, **result.annotations}
        return ConvertedLayer(
            Descriptor(mt.OCI_LAYER_GZIP, digest, size, annotations=annotations), result.diff_id, None
        )
