"""The ``nydus`` driver: RAFS v6 (or v5) blobs per layer plus a merged bootstrap layer, built in pure Python.

Each source layer becomes a Nydus data blob (``application/vnd.oci.image.layer.nydus.blob.v1``, its
bootstrap inlined); the per-layer bootstraps are merged with OCI whiteout semantics into the image
bootstrap, packed as ``image/image.boot`` plus one ``image/<digest>.blob.meta`` per layer into a gzip tar
appended as the last layer. Config ``diff_ids`` and ``history`` follow, as nydus-snapshotter's converter
writes them, so nydusd, nydus-snapshotter and Harbor recognise the image.

Options (upstream's names; every value a string): ``fs_version`` (6, or 5: RAFS v5 layers and a v5
merged bootstrap, whose bootstrap layer has no blob.meta files, as upstream packs it),
``fs_align_chunk`` (4 KiB-aligned uncompressed chunk offsets: a v5 option, v6 is always aligned),
``compressor`` (zstd, lz4_block, none), ``fs_chunk_size`` (hex power of two, default 0x100000),
``digester`` (blake3, sha256),
``prefetch_patterns`` (newline-separated absolute paths), ``batch_size`` (small chunks packed into
batch chunks of up to this size: ``0x`` hex or decimal, a power of two in [0x1000, fs_chunk_size];
"0" or empty is off), ``with_referrer`` (a ``subject`` to the source
manifest: Harbor shows the result as an accessory), ``merge_manifest`` (an index of the OCI and the
Nydus manifests, the Nydus entries marked by their ``artifactType``; the OCI manifest gets an empty
first layer as upstream's does, or stays the original with ``merge_keep_original``, our addition),
``chunk_dict_ref`` (a Nydus image whose chunks are referenced instead of written again: its bootstrap is
read by ranges through the converter, and its blobs the image uses are listed as layers after the
converted ones, as nydus-snapshotter lists chunk-dict blobs).
Upstream's ``work_dir``, ``builder`` and ``docker2oci`` are accepted and have no effect: no external
builder runs and the output is always OCI.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
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
    OpenedImage,
    ReadAt,
    SourceImage,
    bool_option,
    check_known_options,
    choice_option,
    int_option,
    list_option,
)
from accel.errors import ConfigError, ConversionError, FormatError, InvalidReferenceError
from accel.formats import nydus
from accel.formats.layercodec import decompressed, gzip_compress
from accel.formats.nydus import constants as nydus_constants
from accel.formats.nydus.batch import parse_batch_size
from accel.formats.nydus.tail import read_layer_meta, read_toc_digest
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, ImageConfig, Manifest
from accel.oci.reference import parse_image_ref

FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
BUILDER_VERSION = "containerd.io/snapshot/nydus-builder-version"
SOURCE_REFERENCE = "containerd.io/snapshot/nydus-source-reference"
BOOTSTRAP_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}

_OPTIONS = (
    "fs_version",
    "rafs_version",
    "fs_align_chunk",
    "compressor",
    "rafs_compressor",
    "fs_chunk_size",
    "digester",
    "prefetch_patterns",
    "batch_size",
    "with_referrer",
    "merge_manifest",
    "merge_keep_original",
    "oci_ref",
    "chunk_dict_ref",
    "docker2oci",
    "work_dir",
    "builder",
)


# Upstream options this builder does not implement yet: set to anything but their off value they stop
# the configuration with the reason, rather than converting to something other than what was asked.
_NOT_YET = {
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
    """What the merge needs from a converted layer: its bootstrap and blob meta; for an OCI-ref layer also
    its ToC's digest and size (the blob id is then the original layer's digest)."""

    bootstrap: bytes
    blob_meta: bytes
    blob_id: str
    meta_blob_toc: tuple[bytes, int] | None = None


class NydusDriver(Driver[_LayerMeta]):
    name = "nydus"
    version = "1"
    tag_suffix = "-nydus"

    def __init__(self, options: Mapping[str, str]) -> None:
        super().__init__(options)
        check_known_options(options, [*_OPTIONS, *_NOT_YET], self.name)
        _refuse_unsupported(options)
        bool_option(options, "docker2oci")
        fs_version = (options.get("fs_version") or options.get("rafs_version") or "6").strip()
        if fs_version not in ("5", "6"):
            raise ConfigError(
                f"converter.driver.config.fs_version: RAFS v5 and v6 are built, got {fs_version!r}"
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
            fs_version=int(fs_version),
            # With v6 this changes nothing: v6 chunks are always 4 KiB-aligned (nydus-image forces it).
            align_chunk=bool_option(options, "fs_align_chunk"),
            batch_size=batch_size,
        )
        try:
            self.build_options.check()
        except Exception as exc:
            raise ConfigError(f"converter.driver.config: {exc}") from None
        self.with_referrer = bool_option(options, "with_referrer")
        self.merge_manifest = bool_option(options, "merge_manifest")
        self.merge_keep_original = bool_option(options, "merge_keep_original")
        # Upstream forces gzip chunks and sha256 digests for ref layers whatever else is configured.
        self.oci_ref = bool_option(options, "oci_ref")
        if self.oci_ref and self.build_options.fs_version != 6:
            raise ConfigError(
                "converter.driver.config.oci_ref: OCI-ref images are RAFS v6 only (fs_version 6)"
            )
        self.chunk_dict_ref = (options.get("chunk_dict_ref") or "").strip()
        if self.chunk_dict_ref:
            try:
                parse_image_ref(self.chunk_dict_ref)
            except InvalidReferenceError as exc:
                raise ConfigError(f"converter.driver.config.chunk_dict_ref: {exc}") from None
        # Parsed dictionaries by bootstrap layer digest (content-addressed, so safe across conversions).
        self._dicts: dict[str, nydus.ChunkDict] = {}
        self._dicts_lock = threading.Lock()
        if self.oci_ref and self.build_options.batch_size:
            raise ConfigError(
                "converter.driver.config.batch_size: not supported with oci_ref (nothing is packed)"
            )
        if self.chunk_dict_ref and (self.oci_ref or self.build_options.fs_version != 6):
            raise ConfigError(
                "converter.driver.config.chunk_dict_ref: chunk dictionaries are built for RAFS v6 data "
                "blobs only, not with oci_ref or fs_version 5"
            )

    def output_options(self) -> Mapping[str, Any]:
        o = self.build_options
        # v6 keys stay as they were before v5 existed, so that caches of v6 layers remain valid.
        v5: dict[str, Any] = {"fs_version": 5, "align_chunk": o.align_chunk} if o.fs_version == 5 else {}
        out: dict[str, Any] = {
            **v5,
            "compressor": o.compressor,
            "chunk_size": o.chunk_size,
            "digester": o.digester,
            "prefetch": "|".join(o.prefetch_patterns),
            "with_referrer": self.with_referrer,
            "merge_manifest": self.merge_manifest,
            "merge_keep_original": self.merge_keep_original,
            **({"oci_ref": True} if self.oci_ref else {}),
            **({"chunk_dict_ref": self.chunk_dict_ref} if self.chunk_dict_ref else {}),
        }
        if o.batch_size:
            # Only when on, so the keys of conversions without it (and the layer cache) stay as they were.
            out["batch_size"] = o.batch_size
        return out

    def convert_layer(
        self, layer: Descriptor, diff_id: str, ctx: DriverContext
    ) -> ConvertedLayer[_LayerMeta]:
        if self.oci_ref:
            return self._convert_ref_layer(layer, ctx)
        dictionary = self._chunk_dict(ctx) if self.chunk_dict_ref else None
        chunk_dict = dictionary[1] if dictionary else None
        with ctx.open_layer(layer) as raw, decompressed(raw) as tar, ctx.new_blob() as sink:
            build = nydus.build_layer(tar, sink, self.build_options, chunk_dict=chunk_dict)
            digest, size = sink.commit()
        ctx.advance(build.uncompressed_size)
        if dictionary and build.dict_chunks:
            ctx.note(
                f"layer {layer.digest}: {build.dict_chunks} chunks ({build.dict_bytes} bytes) referenced "
                f"from the chunk dictionary {dictionary[0].reference}, not written again "
                f"({build.chunk_count} written)"
            )
        descriptor = Descriptor(mt.NYDUS_BLOB, digest, size, annotations={keys.NYDUS_BLOB: "true"})
        # A nydus blob is stored uncompressed, so its diff_id is its own digest.
        return ConvertedLayer(descriptor, digest, _LayerMeta(build.bootstrap, build.blob_meta, build.blob_id))

    def _convert_ref_layer(self, layer: Descriptor, ctx: DriverContext) -> ConvertedLayer[_LayerMeta]:
        """An OCI-ref layer: the gzip layer is indexed where it is; only the metadata blob is new."""
        compression = mt.layer_compression(layer.media_type)
        if compression != "gzip":
            raise FormatError(
                f"oci_ref indexes gzip layers in place; layer {layer.digest} is {compression or 'not a tar'}"
                f" ({layer.media_type}): convert without oci_ref"
            )
        with ctx.open_layer(layer) as raw, ctx.new_blob() as sink:
            build = nydus.build_ref_layer(raw, sink, self.build_options)
            digest, size = sink.commit()
        if "sha256:" + build.blob_id != layer.digest:
            raise FormatError(f"layer {layer.digest} reads back as sha256:{build.blob_id}")
        ctx.advance(build.uncompressed_size)
        annotations = {keys.NYDUS_BLOB: "true", keys.NYDUS_REF: layer.digest}
        descriptor = Descriptor(mt.NYDUS_BLOB, digest, size, annotations=annotations)
        meta = _LayerMeta(build.bootstrap, build.blob_meta, build.blob_id, build.meta_blob_toc)
        return ConvertedLayer(descriptor, digest, meta)

    def encode_extra(self, extra: _LayerMeta) -> bytes:
        blob_id = extra.blob_id.encode()
        header = struct.pack("<III", len(extra.bootstrap), len(extra.blob_meta), len(blob_id))
        toc = b"" if extra.meta_blob_toc is None else struct.pack("<32sQ", *extra.meta_blob_toc)
        return header + extra.bootstrap + extra.blob_meta + blob_id + toc

    def decode_extra(self, data: bytes) -> _LayerMeta:
        boot, meta, blob_id = struct.unpack_from("<III", data)
        start = struct.calcsize("<III")
        view = memoryview(data)
        end = start + boot + meta + blob_id
        toc: tuple[bytes, int] | None = None
        if len(data) >= end + 40:
            digest, toc_size = struct.unpack_from("<32sQ", data, end)
            toc = (digest, toc_size)
        return _LayerMeta(
            bytes(view[start : start + boot]),
            bytes(view[start + boot : start + boot + meta]),
            bytes(view[start + boot + meta : end]).decode(),
            toc,
        )

    def recover_extra(self, descriptor: Descriptor, read_at: ReadAt) -> _LayerMeta:
        bootstrap, blob_meta = read_layer_meta(read_at, descriptor.size)
        original = descriptor.annotations.get(keys.NYDUS_REF)
        if original is not None:
            toc = read_toc_digest(read_at, descriptor.size)
            return _LayerMeta(bootstrap, blob_meta, original.split(":", 1)[-1], toc)
        return _LayerMeta(bootstrap, blob_meta, descriptor.digest.split(":", 1)[1])

    def image_layers(
        self, image: SourceImage, layers: Sequence[ConvertedLayer[_LayerMeta]], ctx: DriverContext
    ) -> list[ImageLayer]:
        merged = nydus.merge(
            [(layer.extra.bootstrap, layer.extra.blob_id) for layer in layers],
            prefetch_patterns=self.build_options.prefetch_patterns,
            meta_blobs=[_meta_blob(layer) for layer in layers],
            chunk_dict_blobs=self._shared_blobs(layers, ctx),
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
            annotations={keys.NYDUS_BOOTSTRAP: "true", FS_VERSION: str(self.build_options.fs_version)},
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
        extra = self._dict_layers(layers, appended, ctx)
        converted = super().finish_image(image, [*layers, *extra], appended, ctx)
        if self.oci_ref:
            # nydusd reads the chunks from the original layers by digest, in the image's own repository.
            converted.required_blobs = list(image.manifest.layers)
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

    # ------------------------------------------------------------------ chunk dictionary

    def _chunk_dict(self, ctx: DriverContext) -> tuple[OpenedImage, nydus.ChunkDict]:
        """The dictionary image and its chunks (the first of its manifests that is a Nydus image: chunk
        digests are the same on every platform, so any one serves)."""
        image = ctx.open_image(self.chunk_dict_ref)
        for _, manifest in image.manifests:
            boot = manifest.layers[-1] if manifest.layers else None
            if boot is not None and boot.annotations.get(keys.NYDUS_BOOTSTRAP) == "true":
                break
        else:
            raise ConversionError(
                f"chunk_dict_ref {self.chunk_dict_ref}: {image.reference} is not a Nydus image "
                "(no manifest ends with a bootstrap layer)"
            )
        with self._dicts_lock:
            found = self._dicts.get(boot.digest)
        if found is None:
            try:
                bootstrap = nydus.bootstrap_from_layer_at(image.read_at(boot), boot.size, boot.digest)
                found = nydus.read_chunk_dict(bootstrap)
                nydus.check_chunk_dict(found, self.build_options)
            except FormatError as exc:
                raise ConversionError(f"chunk_dict_ref {image.reference}: {exc}") from None
            with self._dicts_lock:
                if len(self._dicts) >= 4:
                    self._dicts.pop(next(iter(self._dicts)))
                self._dicts[boot.digest] = found
        return image, found

    def _shared_blobs(self, layers: Sequence[ConvertedLayer[_LayerMeta]], ctx: DriverContext) -> set[str]:
        """Blob ids the merge keeps as they are: every id but the placeholder of a layer's own blob (the
        dictionary's blobs, also those of a layer cached from an earlier dictionary, which finish_image then
        refuses by name)."""
        if not self.chunk_dict_ref:
            return set()
        shared = set(self._chunk_dict(ctx)[1].blob_ids)
        for layer in layers:
            shared.update(self._referenced(layer))
        return shared

    @staticmethod
    def _referenced(layer: ConvertedLayer[_LayerMeta]) -> list[str]:
        return [
            i
            for i in nydus.bootstrap_blob_ids(layer.extra.bootstrap)
            if i != nydus_constants.PLACEHOLDER_BLOB_ID
        ]

    def _dict_layers(
        self, layers: Sequence[ConvertedLayer[_LayerMeta]], appended: Sequence[ImageLayer], ctx: DriverContext
    ) -> list[ConvertedLayer[_LayerMeta]]:
        """The dictionary blobs the merged bootstrap references, as layers after the converted ones in its
        blob-table order (nydus-snapshotter's ``mergeManifestBlobDigests``), so that registries keep them
        with the image and nydusd finds them by digest."""
        if not self.chunk_dict_ref:
            return []
        image = self._chunk_dict(ctx)[0]
        known = {blob.digest: blob for _, manifest in image.manifests for blob in manifest.layers}
        own = {layer.descriptor.digest for layer in layers}
        out: list[ConvertedLayer[_LayerMeta]] = []
        for blob_id in nydus.bootstrap_blob_ids(self._merged_bootstrap(appended, ctx)):
            digest = "sha256:" + blob_id
            if digest in own:
                continue
            found = known.get(digest)
            if found is None:
                raise ConversionError(
                    f"the image's bootstrap references blob {digest}, which the chunk dictionary "
                    f"{image.reference} does not list (a layer converted with an earlier dictionary?)"
                )
            own.add(digest)
            descriptor = Descriptor(mt.NYDUS_BLOB, digest, found.size, annotations={keys.NYDUS_BLOB: "true"})
            out.append(ConvertedLayer(descriptor, digest, _LayerMeta(b"", b"", blob_id)))
        return out

    @staticmethod
    def _merged_bootstrap(appended: Sequence[ImageLayer], ctx: DriverContext) -> bytes:
        for layer in appended:
            if layer.descriptor.annotations.get(keys.NYDUS_BOOTSTRAP) == "true":
                data = ctx.read_blob(layer.descriptor.digest)
                return nydus.bootstrap_from_layer(decompressed(io.BytesIO(data)))
        raise ConversionError("no bootstrap layer to list the chunk dictionary's blobs from")

    def manifest_annotations(self, reference: str, digest: str) -> dict[str, str]:
        return {
            keys.NYDUS_SOURCE_DIGEST: digest,
            SOURCE_REFERENCE: reference,
            FS_VERSION: str(self.build_options.fs_version),
            BUILDER_VERSION: f"accel-{__version__}",
        }


def _meta_blob(layer: ConvertedLayer[_LayerMeta]) -> nydus.MetaBlob | None:
    toc = layer.extra.meta_blob_toc
    if toc is None:
        return None
    digest = bytes.fromhex(layer.descriptor.digest.split(":", 1)[1])
    return nydus.MetaBlob(digest, layer.descriptor.size, toc[0], toc[1])


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
