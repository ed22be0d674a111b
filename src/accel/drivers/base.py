"""The driver interface: one thin adapter per format between the converter and a format library.

A driver converts one image manifest (one platform). The converter resolves the source, selects
platforms, hands each manifest to the driver through a ``DriverContext``, then pushes what the driver
returns. Drivers never talk to registries: they read source layers and write new blobs through the
context, which pulls lazily and stores everything in the content store.

Most formats convert layer by layer; ``LayerDriver`` runs ``convert_layer`` over the layers in parallel
(bounded by the context) and rebuilds the config and manifest around the results.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Protocol, TypeVar

from accel.content import BlobWriter
from accel.errors import ConfigError, ConversionError, FormatError
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, ImageConfig, Index, Manifest
from accel.oci.platform import Platform

T = TypeVar("T")
R = TypeVar("R")


class DriverContext(Protocol):
    """What a driver may do while converting; implemented by the converter."""

    def open_layer(self, layer: Descriptor) -> BinaryIO:
        """The source blob of ``layer`` (compressed as stored), pulled into the content store if needed."""
        ...

    def new_blob(self) -> BlobWriter:
        """A writer for a new blob in the content store."""
        ...

    def put_blob(self, data: bytes) -> str:
        """Store a small blob and return its digest."""
        ...

    def read_blob(self, digest: str) -> bytes:
        """A small blob (config, manifest) from the content store or the source."""
        ...

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(i) for i in items]``, run in parallel within the converter's bounds."""
        ...

    def check_canceled(self) -> None:
        """Raise CanceledError when the conversion was canceled."""
        ...

    def advance(self, stage: str, nbytes: int) -> None:
        """Report progress: ``nbytes`` more bytes done in ``stage`` (``"convert"``)."""
        ...

    def note(self, message: str) -> None:
        """Record something the user should see in the result (a skipped layer and why)."""
        ...

    def cached_layer(self, layer: Descriptor, driver_key: str) -> CachedLayer | None:
        """A usable earlier conversion of ``layer`` by a driver with ``driver_key``, or None."""
        ...

    def remember_layer(self, layer: Descriptor, driver_key: str, converted: CachedLayer) -> None:
        """Offer a conversion to the layer cache (recorded once the result is pushed)."""
        ...

    def cached_image_layer(self, key: str, driver_key: str) -> CachedLayer | None:
        """A layer made from a whole image's layers before (Nydus's bootstrap), by ``key``; not counted
        as a layer cache hit or miss."""
        ...

    def remember_image_layer(self, key: str, driver_key: str, layer: CachedLayer) -> None:
        """Offer such a layer to the cache, under ``key``."""
        ...

    @property
    def scratch_dir(self) -> str:
        """A directory under ``provider.work_dir`` for a format's temporary files (spooled input)."""
        ...


@dataclass
class SourceImage:
    """One platform's image as the driver receives it.

    ``annotations`` must be carried by the converted manifest (the converter's marks: driver, source
    digest and reference); drivers add them before computing any digest of the manifest.
    """

    reference: str
    manifest: Manifest
    digest: str
    config: ImageConfig
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    def descriptor(self) -> Descriptor:
        """The source manifest's descriptor (for a ``subject``)."""
        media_type = self.manifest.media_type or mt.OCI_MANIFEST
        return Descriptor(media_type, self.digest, len(self.manifest.to_bytes()))


@dataclass
class Artifact:
    """A manifest pushed beside the converted image, by digest, before any tag moves.

    Its config and layers must be in the content store. With a ``subject`` it is a referrer (the converter
    also maintains the ``sha256-<hex>`` fallback tag); with ``index_entry`` it is listed in the output
    index (the descriptor's digest must be the manifest's).
    """

    manifest: Manifest
    index_entry: Descriptor | None = None
    first: bool = False
    """List ``index_entry`` before the converted manifest (runtimes pick the first matching platform)."""


@dataclass
class ConvertedImage:
    """The driver's output for one manifest.

    Every blob ``manifest`` references is either in the content store or already in the source
    repository (unchanged layers). ``unchanged`` says the image itself stays as it is (only artifacts are
    added, as SOCI v1 does): nothing is tagged then. When any artifact has an ``index_entry`` the output is
    an index even for a single-manifest source.
    """

    manifest: Manifest
    artifacts: list[Artifact] = field(default_factory=list)
    unchanged: bool = False
    entry_artifact_type: str | None = None
    """``artifactType`` of the converted manifest's entry in the output index (Nydus in merged indexes)."""


@dataclass(frozen=True)
class CachedLayer:
    """A converted layer as the layer cache keeps it: ``extra`` is the driver's encoding of its extra."""

    descriptor: Descriptor
    diff_id: str
    extra: bytes = b""


@dataclass
class ConvertedLayer:
    descriptor: Descriptor
    diff_id: str
    extra: Any = None
    """Driver-specific results needed after all layers are converted (Nydus: the layer's bootstrap)."""


class Driver(ABC):
    """A format adapter. Subclasses set ``name`` and parse their options in ``__init__``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"

    def __init__(self, options: Mapping[str, str]) -> None:
        self.options = dict(options)

    def options_key(self) -> str:
        """The options that change the output, canonically encoded (for task dedup and the layer cache)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.output_options().items()))

    def output_options(self) -> Mapping[str, Any]:
        return {}

    def key(self) -> str:
        """Identifies the output exactly: name, version and the options that change output (task dedup,
        the layer cache)."""
        return f"{self.name}/{self.version}/{self.options_key()}"

    @abstractmethod
    def convert(self, image: SourceImage, ctx: DriverContext) -> ConvertedImage:
        """Convert one image manifest."""

    def finish_index(self, index: Index, source: Index, ctx: DriverContext) -> Index:
        """Adjust the rebuilt index of a multi-platform conversion (default: unchanged)."""
        return index

    def manifest_annotations(self, reference: str, digest: str) -> dict[str, str]:
        """Annotations the driver adds to every converted manifest and to the index, given the source
        reference and the digest of the source manifest (or index) being converted."""
        return {}


class LayerDriver(Driver):
    """A driver that converts each layer on its own and then rebuilds config and manifest."""

    @abstractmethod
    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer:
        """Convert one source layer (``diff_id``: its uncompressed digest) into a new blob in the store."""

    def encode_extra(self, extra: Any) -> bytes:
        """Serialise ``ConvertedLayer.extra`` for the layer cache (drivers that use ``extra`` override)."""
        return b""

    def decode_extra(self, data: bytes) -> Any:
        return None

    def recover_extra(self, descriptor: Descriptor, read_at: Callable[[int, int], bytes]) -> bytes:
        """The encoded extra of a converted blob known only by its descriptor (a remote cache record),
        read from the blob itself with ranged reads. Drivers without extra need nothing."""
        return b""

    def extra_layers(
        self, image: SourceImage, layers: list[ConvertedLayer], ctx: DriverContext
    ) -> list[tuple[ConvertedLayer, dict[str, Any]]]:
        """Layers appended after the converted ones, each with its history entry (Nydus's bootstrap)."""
        return []

    def convert(self, image: SourceImage, ctx: DriverContext) -> ConvertedImage:
        diff_ids, layers = image.config.diff_ids, image.manifest.layers
        if len(diff_ids) != len(layers):
            raise ConversionError(
                f"{image.reference}: config lists {len(diff_ids)} diff_ids for {len(layers)} layers"
            )

        key = self.key()

        def one(pair: tuple[Descriptor, str]) -> ConvertedLayer:
            layer, diff_id = pair
            ctx.check_canceled()
            cached = ctx.cached_layer(layer, key)
            if cached is not None:
                return ConvertedLayer(cached.descriptor, cached.diff_id, self.decode_extra(cached.extra))
            try:
                converted = self.convert_layer(layer, diff_id, ctx)
            except FormatError as exc:
                raise exc.in_layer(layer.digest) from exc
            extra = self.encode_extra(converted.extra)
            ctx.remember_layer(layer, key, CachedLayer(converted.descriptor, converted.diff_id, extra))
            return converted

        converted = ctx.map(one, list(zip(layers, diff_ids, strict=True)))
        return rebuild_image(image, converted, self._extra_layers_once(image, converted, ctx), ctx)

    def _extra_layers_once(
        self, image: SourceImage, layers: list[ConvertedLayer], ctx: DriverContext
    ) -> list[tuple[ConvertedLayer, dict[str, Any]]]:
        """``extra_layers``, taken from the cache when the same layers were converted together before:
        re-converting an image then costs no merge (a Nydus bootstrap of 100k files takes seconds)."""
        driver_key = self.key()
        sources = "\n".join([driver_key, *(layer.digest for layer in image.manifest.layers)])
        key = "sha256:" + hashlib.sha256(sources.encode()).hexdigest()
        cached = ctx.cached_image_layer(key, driver_key)
        if cached is not None:
            return [(ConvertedLayer(cached.descriptor, cached.diff_id), json.loads(cached.extra))]
        extras = self.extra_layers(image, layers, ctx)
        if len(extras) == 1:
            layer, history = extras[0]
            ctx.remember_image_layer(
                key, driver_key, CachedLayer(layer.descriptor, layer.diff_id, json.dumps(history).encode())
            )
        return extras


def rebuild_image(
    image: SourceImage,
    layers: list[ConvertedLayer],
    extra: list[tuple[ConvertedLayer, dict[str, Any]]],
    ctx: DriverContext,
) -> ConvertedImage:
    """The OCI image made of ``layers`` (+ ``extra``): config diff_ids and history rewritten, OCI types."""
    config = ImageConfig.from_json(image.config.to_json())
    config.diff_ids = [layer.diff_id for layer in layers]
    for layer, history in extra:
        config.append_layer(layer.diff_id, history if config.history else None)
    config_bytes = config.to_bytes()
    config_digest = ctx.put_blob(config_bytes)
    manifest = Manifest(
        config=Descriptor(media_type=mt.OCI_CONFIG, digest=config_digest, size=len(config_bytes)),
        layers=[layer.descriptor for layer in layers] + [layer.descriptor for layer, _ in extra],
        media_type=mt.OCI_MANIFEST,
        annotations={**image.manifest.annotations, **image.annotations},
    )
    return ConvertedImage(manifest=manifest)


def bool_option(options: Mapping[str, str], key: str, default: bool = False) -> bool:
    """A boolean driver option (upstream passes every option as a string)."""
    value = options.get(key)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"converter.driver.config.{key}: expected true or false, got {value!r}")


def int_option(options: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    """An integer driver option; accepts decimal and ``0x`` hex (upstream's ``fs_chunk_size`` is hex)."""
    value = options.get(key)
    if value is None or value == "":
        return default
    try:
        number = int(value.strip(), 0)
    except ValueError:
        raise ConfigError(f"converter.driver.config.{key}: expected an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"converter.driver.config.{key}: must be at least {minimum}, got {number}")
    return number


def choice_option(options: Mapping[str, str], key: str, choices: Sequence[str], default: str) -> str:
    value = (options.get(key) or default).strip()
    if value not in choices:
        raise ConfigError(
            f"converter.driver.config.{key}: expected one of {', '.join(choices)}, got {value!r}"
        )
    return value


def list_option(options: Mapping[str, str], key: str) -> tuple[str, ...]:
    """A list option: one item per line or comma (a YAML list is joined with newlines on load)."""
    value = options.get(key) or ""
    return tuple(item.strip() for item in value.replace(",", "\n").splitlines() if item.strip())


def check_known_options(options: Mapping[str, str], known: Sequence[str], driver: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"converter.driver.config: unknown option(s) for driver {driver!r}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
