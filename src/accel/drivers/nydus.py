"""The ``nydus`` driver: RAFS v6 blobs per layer plus a merged bootstrap layer, built in pure Python.

Each source layer becomes a Nydus data blob (``application/vnd.oci.image.layer.nydus.blob.v1``, its
bootstrap inlined); the per-layer bootstraps are merged with OCI whiteout semantics into the image
bootstrap, packed as ``image/image.boot`` plus one ``image/<digest>.blob.meta`` per layer into a gzip tar
appended as the last layer. Config ``diff_ids`` and ``history`` follow, as nydus-snapshotter's converter
writes them, so nydusd, nydus-snapshotter and Harbor recognise the image.

Options (upstream's names; every value a string): ``fs_version`` (6), ``compressor`` (zstd, lz4_block,
none), ``fs_chunk_size`` (hex power of two, default 0x100000), ``digester`` (blake3, sha256),
``prefetch_patterns`` (newline-separated absolute paths), ``batch_size`` (small chunks packed into
batch chunks of up to this size: ``0x`` hex or decimal, a power of two in [0x1000, fs_chunk_size];
"0" or empty is off), ``with_referrer`` (a ``subject`` to the source
manifest: Harbor shows the result as an accessory), ``merge_manifest`` (an index of the OCI and the
Nydus manifests, the Nydus entries marked by their ``artifactType``; the OCI manifest gets an empty
first layer as upstream's does, or stays the original with ``merge_keep_original``, our addition).
Upstream's ``work_dir``, ``builder`` and ``docker2oci`` are accepted and have no effect: no external
builder runs and the output is always OCI.
"""

from __future__ import annotations

import hashlib
import struct
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
    bool_option,
    check_known_options,
    choice_option,
    int_option,
    list_option,
)
from accel.errors import ConfigError, FormatError
from accel.formats import nydus
from accel.formats.layercodec import decompressed, gzip_compress
from accel.formats.nydus.batch import parse_batch_size
from accel.formats.nydus.tail import read_layer_meta
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, ImageConfig, Manifest

FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
BUILDER_VERSION = "containerd.io/snapshot/nydus-builder-version"
SOURCE_REFERENCE = "containerd.io/snapshot/nydus-source-reference"
BOOTSTRAP_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}

_OPTIONS = (
    "fs_version",
    "rafs_version",
    "compressor",
    "rafs_compressor",
    "fs_chunk_size",
    "digester",
    "prefetch_patterns",
    "batch_size",
    "with_referrer",
    "merge_manifest",
    "merge_keep_original",
    "docker2oci",
    "work_dir",
    "builder",
)


# Upstream options this builder does not implement yet: set to anything but their off value they stop
# the configuration with the reason, rather than converting to something other than what was asked.
_NOT_YET = {
    "oci_ref": "OCI-referenced (zran) images are not built yet; convert without it for data blobs",
    "chunk_dict_ref": "chunk dictionaries are not supported yet; every chunk is written",
    "fs_align_chunk": "aligned chunks (a RAFS v5 builder option) are not supported: only RAFS v6 is built",
    "encrypt_recipients": "encrypted blobs are not supported",
    "backend_type": "external blob backends (oss, s3) are not supported: blobs go to the registry",
    "backend_config": "external blob backends (oss, s3) are not supported: blobs go to the registry",
    "backend_force_push": "external blob backends (oss, s3) are not supported: blobs go to the registry",
}
_OFF_VALUES = frozenset({"", "false", "0", "0x0", "no", "off"})


def _refuse_unsupported(options: Mapping[str, str]) -> None:
    for key, why in _NOT_YET.items():
        value = options.get(key)
        if value is not None and value.strip().lower() not in _OFF_VALUES:
            raise ConfigError(f"converter.driver.config.{key}: not supported: {why}")


@dataclass(frozen=True)
class _LayerMeta:
    """What the merge needs from a converted layer: its bootstrap and blob meta."""

    bootstrap: bytes
    blob_meta: bytes
    blob_id: str


class NydusDriver(Driver[_LayerMeta]):
    name = "nydus"
    version = "1"
    tag_suffix = "-nydus"

    def __init__(self, options: Mapping[str, str]) -> None:
        super().__init__(options)
        check_known_options(options, [*_OPTIONS, *_NOT_YET], self.name)
        _refuse_unsupported(options)
        bool_option(options, "docker2oci")
        fs_version = options.get("fs_version") or options.get("rafs_version") or "6"
        if fs_version.strip() != "6":
            raise ConfigError(
                f"converter.driver.config.fs_version: only RAFS v6 is built, got {fs_version!r}"
            )
        merged = {**options, "compressor": options.get("compressor") or options.get("rafs_compressor") or ""}
        try:
            batch_size = parse_batch_size(options.get("batch_size") or "")
        except FormatError as exc:
            raise ConfigError(f"converter.driver.config.batch_size: {exc.reason}") from None
        self.build_options = nydus.Options(
            compressor=choice_option(merged, "compressor", ("zstd", "lz4_block", "none"), "zstd"),
            chunk_size=int_option(options, "fs_chunk_size", 0x100000, minimum=0x1000),
            digester=choice_option(options, "digester", ("blake3", "sha256"), "blake3"),
            prefetch_patterns=list_option(options, "prefetch_patterns") or ("/",),
            batch_size=batch_size,
        )
        try:
            self.build_options.check()
        except Exception as exc:
            raise ConfigError(f"converter.driver.config: {exc}") from None
        self.with_referrer = bool_option(options, "with_referrer")
        self.merge_manifest = bool_option(options, "merge_manifest")
        self.merge_keep_original = bool_option(options, "merge_keep_original")

    def output_options(self) -> Mapping[str, Any]:
        o = self.build_options
        out: dict[str, Any] = {
            "compressor": o.compressor,
            "chunk_size": o.chunk_size,
            "digester": o.digester,
            "prefetch": "|".join(o.prefetch_patterns),
            "with_referrer": self.with_referrer,
            "merge_manifest": self.merge_manifest,
            "merge_keep_original": self.merge_keep_original,
        }
        if o.batch_size:
            # Only when on, so the keys of conversions without it (and the layer cache) stay as they were.
            out["batch_size"] = o.batch_size
        return out

    def convert_layer(
        self, layer: Descriptor, diff_id: str, ctx: DriverContext
    ) -> ConvertedLayer[_LayerMeta]:
        with ctx.open_layer(layer) as raw, decompressed(raw) as tar, ctx.new_blob() as sink:
            build = nydus.build_layer(tar, sink, self.build_options)
            digest, size = sink.commit()
        ctx.advance(build.uncompressed_size)
        descriptor = Descriptor(mt.NYDUS_BLOB, digest, size, annotations={keys.NYDUS_BLOB: "true"})
        # A nydus blob is stored uncompressed, so its diff_id is its own digest.
        return ConvertedLayer(descriptor, digest, _LayerMeta(build.bootstrap, build.blob_meta, build.blob_id))

    def encode_extra(self, extra: _LayerMeta) -> bytes:
        blob_id = extra.blob_id.encode()
        header = struct.pack("<III", len(extra.bootstrap), len(extra.blob_meta), len(blob_id))
        return header + extra.bootstrap + extra.blob_meta + blob_id

    def decode_extra(self, data: bytes) -> _LayerMeta:
        boot, meta, blob_id = struct.unpack_from("<III", data)
        start = struct.calcsize("<III")
        view = memoryview(data)
        return _LayerMeta(
            bytes(view[start : start + boot]),
            bytes(view[start + boot : start + boot + meta]),
            bytes(view[start + boot + meta : start + boot + meta + blob_id]).decode(),
        )

    def recover_extra(self, descriptor: Descriptor, read_at: ReadAt) -> _LayerMeta:
        bootstrap, blob_meta = read_layer_meta(read_at, descriptor.size)
        return _LayerMeta(bootstrap, blob_meta, descriptor.digest.split(":", 1)[1])

    def image_layers(
        self, image: SourceImage, layers: Sequence[ConvertedLayer[_LayerMeta]], ctx: DriverContext
    ) -> list[ImageLayer]:
        merged = nydus.merge(
            [(layer.extra.bootstrap, layer.extra.blob_id) for layer in layers],
            prefetch_patterns=self.build_options.prefetch_patterns,
        )
        blob_metas = [
            (layer.descriptor.digest.split(":", 1)[1], layer.extra.blob_meta)
            for layer in layers
            if layer.extra.blob_meta
        ]
        # Bootstraps are small (tens of MB for 100k files), so the bootstrap layer is built in memory.
        tar = nydus.bootstrap_layer_tar(merged, blob_metas)
        compressed = gzip_compress(tar)
        digest = ctx.put_blob(compressed)
        descriptor = Descriptor(
            mt.OCI_LAYER_GZIP,
            digest,
            len(compressed),
            annotations={keys.NYDUS_BOOTSTRAP: "true", FS_VERSION: "6"},
        )
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        return [ImageLayer(descriptor, diff_id, dict(BOOTSTRAP_HISTORY))]

    def finish_image(
        self,
        image: SourceImage,
        layers: Sequence[ConvertedLayer[_LayerMeta]],
        appended: Sequence[ImageLayer],
        ctx: DriverContext,
    ) -> ConvertedImage:
        converted = super().finish_image(image, layers, appended, ctx)
        if self.with_referrer:
            converted.manifest.subject = image.descriptor()
        if self.merge_manifest:
            # One index serves both kinds of clients: the OCI manifest first (runtimes without Nydus take
            # the first match), then the Nydus one marked by its artifactType.
            if self.merge_keep_original:
                original = image.descriptor().replace(platform=image.platform)
                converted.artifacts.append(Artifact(image.manifest, index_entry=original, first=True))
            else:
                converted.artifacts.append(_with_empty_first_layer(image, ctx))
            converted.entry_artifact_type = mt.NYDUS_ARTIFACT
        return converted

    def manifest_annotations(self, reference: str, digest: str) -> dict[str, str]:
        return {
            keys.NYDUS_SOURCE_DIGEST: digest,
            SOURCE_REFERENCE: reference,
            FS_VERSION: "6",
            BUILDER_VERSION: f"accel-{__version__}",
        }


# The empty layer upstream's merge_manifest puts first: gzip (as Go writes it) of an empty tar, 1,024 zero
# bytes. Its digest and diff_id are the well-known ones of Docker's empty layer.
EMPTY_LAYER = bytes.fromhex("1f8b08000000000000ff621805a360148c5800080000ffff2eafb5ef00040000")
EMPTY_LAYER_DIGEST = "sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1"
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
EMPTY_LAYER_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Empty Layer"}


def _with_empty_first_layer(image: SourceImage, ctx: DriverContext) -> Artifact:
    """The source manifest as upstream's ``merge_manifest`` lists it: an empty layer first (annotated
    ``nydus-empty-layer``), its diff_id and a history entry without a timestamp first in the config, the
    source digest annotated. The layer chain then differs from the original image's, so a runtime never
    reuses the original's unpacked snapshots for it (nor, through them, for the Nydus manifest); and the
    same source always gives the same digests."""
    docker = image.manifest.media_type == mt.DOCKER_MANIFEST
    ctx.put_blob(EMPTY_LAYER)
    empty = Descriptor(
        media_type=mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP,
        digest=EMPTY_LAYER_DIGEST,
        size=len(EMPTY_LAYER),
        annotations={keys.NYDUS_EMPTY_LAYER: "true"},
    )
    config = ImageConfig.from_json(image.config.to_json())
    config.diff_ids = [EMPTY_LAYER_DIFF_ID, *config.diff_ids]
    config.history = [dict(EMPTY_LAYER_HISTORY), *config.history]
    config_bytes = config.to_bytes()
    config_media_type = mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG
    manifest = Manifest(
        config=Descriptor(config_media_type, ctx.put_blob(config_bytes), len(config_bytes)),
        layers=[empty, *image.manifest.layers],
        media_type=image.manifest.media_type or mt.OCI_MANIFEST,
        annotations={**image.manifest.annotations, keys.NYDUS_SOURCE_DIGEST: image.digest},
    )
    entry = Descriptor.of(
        manifest.to_bytes(),
        manifest.media_type or mt.OCI_MANIFEST,
        platform=image.platform,
        annotations={keys.NYDUS_SOURCE_DIGEST: image.digest},
    )
    return Artifact(manifest, index_entry=entry, first=True)
