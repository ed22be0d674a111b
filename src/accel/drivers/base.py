"""The driver interface: one thin adapter per format between the converter and a format library.

The converter owns a conversion: it resolves the source, selects platforms, looks every layer up in the
layer cache and calls the driver only for the layers the cache lacks, then pushes. A driver answers two
questions, for one platform's image at a time:

* ``convert_layer`` — one source layer in, one converted layer out (a new blob in the content store, or the
  layer as it is), with the ``extra`` the driver needs later to rebuild the image without converting the
  layer again (Nydus: the layer's bootstrap and blob meta). ``encode_extra``/``decode_extra`` serialise it
  for the layer cache; ``recover_extra`` rebuilds it from a converted blob alone (a remote cache record).
* ``image_layers`` then ``finish_image`` — the image-level work: layers made from all the converted layers
  together (Nydus's merged bootstrap; the converter caches them too), and the manifest and artifacts
  (config rewritten, SOCI index, referrers, merged manifests).

Drivers never talk to registries or caches: they read source layers and write blobs through a small
``DriverContext``. An image other than the source that a driver's options name (Nydus's
``chunk_dict_ref``) is opened through the context too (``open_image``): the converter resolves it through
the configured registries, and makes its blobs present in the target when a converted manifest lists them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Generic, Protocol, TypeVar

from accel.content import BlobWriter
from accel.errors import ConfigError
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, ImageConfig, Index, Manifest
from accel.oci.platform import Platform

E = TypeVar("E")
C = TypeVar("C", bound=str)

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, length)``: ranged reads of one blob."""


class OpenedImage(Protocol):
    """An image other than the source, as the converter resolved it for a driver (``open_image``).

    Its blobs are read by ranges, never pulled whole. A converted manifest may list them as its own layers:
    the converter then makes them present in the target (mounted from their repository where it can).
    """

    @property
    def reference(self) -> str:
        """The image as resolved: ``host/repository@digest`` of what the reference pointed at."""
        ...

    @property
    def manifests(self) -> Sequence[tuple[Descriptor, Manifest]]:
        """Its manifests with their descriptors: the one manifest, or every manifest entry of an index in
        index order (the descriptors carry the index's platforms and artifact types)."""
        ...

    def read_at(self, blob: Descriptor) -> ReadAt:
        """Ranged reads of one of its blobs (unverified: the caller checks what it reads)."""
        ...


class DriverContext(Protocol):
    """The I/O a format needs while converting; implemented by the converter."""

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

    def check_canceled(self) -> None:
        """Raise CanceledError when the conversion was canceled."""
        ...

    def open_image(self, reference: str) -> OpenedImage:
        """Another image (``host/repo:tag`` or ``@digest``), resolved once per conversion however often it
        is asked for; only configured registries are contacted."""
        ...

    def advance(self, nbytes: int) -> None:
        """Report progress: ``nbytes`` more uncompressed bytes converted."""
        ...

    def note(self, message: str) -> None:
        """Record something the user should see in the result (a skipped layer and why)."""
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


@dataclass(frozen=True)
class ConvertedLayer(Generic[E]):
    """One converted layer: its blob, its uncompressed digest, and what the driver needs of it later."""

    descriptor: Descriptor
    diff_id: str
    extra: E


@dataclass(frozen=True)
class ImageLayer:
    """A layer made from all the converted layers of an image (Nydus's bootstrap), appended after them."""

    descriptor: Descriptor
    diff_id: str
    history: dict[str, Any]
    """Its entry in the config's ``history``."""


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
    required_blobs: list[Descriptor] = field(default_factory=list)
    """Blobs the image needs in the target repository although no manifest lists them (the original
    layers an OCI-ref Nydus image reads its chunks from); pushed, mounted or found there like layers."""


class Driver(ABC, Generic[E]):
    """A format adapter. Subclasses set ``name`` and parse their options in ``__init__``; ``E`` is the type of
    the per-layer ``extra``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    tag_suffix: ClassVar[str]
    """The target tag suffix when no rule of this driver's config names one."""
    caches_layers: ClassVar[bool] = True
    """Whether converted layers are worth caching (False: the driver reads no layer or keeps it as it is)."""

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
    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[E]:
        """Convert one source layer (``diff_id``: its uncompressed digest); layers may run in parallel."""

    @abstractmethod
    def encode_extra(self, extra: E) -> bytes:
        """``ConvertedLayer.extra`` as the layer cache keeps it."""

    @abstractmethod
    def decode_extra(self, data: bytes) -> E: ...

    @abstractmethod
    def recover_extra(self, descriptor: Descriptor, read_at: ReadAt) -> E:
        """The extra of a converted blob known only by its descriptor (a remote cache record), read from the
        blob itself."""

    def image_layers(
        self, image: SourceImage, layers: Sequence[ConvertedLayer[E]], ctx: DriverContext
    ) -> list[ImageLayer]:
        """Layers built from all the converted layers together, appended after them (default: none). The
        converter caches them by the source layers they were made from."""
        return []

    def finish_image(
        self,
        image: SourceImage,
        layers: Sequence[ConvertedLayer[E]],
        appended: Sequence[ImageLayer],
        ctx: DriverContext,
    ) -> ConvertedImage:
        """The converted image around the converted and appended layers (default: config rewritten, OCI
        media types)."""
        return rebuild_image(image, layers, appended, ctx)

    def finish_index(self, index: Index, source: Index, ctx: DriverContext) -> Index:
        """Adjust the rebuilt index of a multi-platform conversion (default: unchanged)."""
        return index

    def manifest_annotations(self, reference: str, digest: str) -> dict[str, str]:
        """Annotations the driver adds to every converted manifest and to the index, given the source
        reference and the digest of the source manifest (or index) being converted."""
        return {}


class PlainDriver(Driver[None]):
    """A driver whose converted layers need nothing beyond their descriptor and diff_id."""

    def encode_extra(self, extra: None) -> bytes:
        return b""

    def decode_extra(self, data: bytes) -> None:
        return None

    def recover_extra(self, descriptor: Descriptor, read_at: ReadAt) -> None:
        return None


def rebuild_image(
    image: SourceImage,
    layers: Sequence[ConvertedLayer[Any]],
    appended: Sequence[ImageLayer],
    ctx: DriverContext,
) -> ConvertedImage:
    """The OCI image made of ``layers`` (+ ``appended``): config diff_ids and history rewritten, OCI types."""
    config = ImageConfig.from_json(image.config.to_json())
    config.diff_ids = [layer.diff_id for layer in layers]
    for layer in appended:
        config.append_layer(layer.diff_id, layer.history if config.history else None)
    config_bytes = config.to_bytes()
    config_digest = ctx.put_blob(config_bytes)
    manifest = Manifest(
        config=Descriptor(media_type=mt.OCI_CONFIG, digest=config_digest, size=len(config_bytes)),
        layers=[layer.descriptor for layer in layers] + [layer.descriptor for layer in appended],
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


def choice_option(options: Mapping[str, str], key: str, choices: Sequence[C], default: C) -> C:
    """One of ``choices`` (typed as them: a ``Literal`` tuple gives a ``Literal`` back)."""
    value = (options.get(key) or default).strip()
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigError(f"converter.driver.config.{key}: expected one of {', '.join(choices)}, got {value!r}")


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
