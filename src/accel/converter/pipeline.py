"""The conversion pipeline: resolve the source, select platforms, convert with the driver, push.

Push order is what keeps a failed or killed conversion harmless: every blob first (layers, then configs),
then the platform manifests by digest, then referrers, and the tagged manifest or index last. Until that
last PUT nothing points at the new content, so an interrupted run leaves no target tag.

Source layers are pulled lazily, only when a driver reads them (the ``oci`` driver never does: its layers
are mounted across repositories or found in place), into the content store under a lease, so garbage
collection never removes what a running conversion uses.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from accel.config import Config
from accel.content import BlobWriter, ContentStore, Lease
from accel.converter.cache import CacheSession, LayerCache, RemoteCache
from accel.converter.progress import ConversionResult, Counters, Progress, SourceInspection
from accel.converter.repositories import (
    ImageRepository,
    LayoutRepository,
    RegistryRepository,
    open_repository,
)
from accel.converter.rules import target_reference
from accel.drivers import Driver, create_driver
from accel.drivers.base import CachedLayer, ConvertedImage, SourceImage
from accel.errors import CanceledError, ConversionError, NotFoundError
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, ImageConfig, Index, Manifest, parse_manifest
from accel.oci.platform import Platform, PlatformMatcher
from accel.oci.reference import LayoutReference, Reference, parse_image_ref
from accel.registry import RegistryClient

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Converter:
    """Converts images with the configured driver; one instance serves many conversions (thread-safe)."""

    def __init__(
        self,
        config: Config,
        *,
        client: RegistryClient | None = None,
        store: ContentStore | None = None,
        driver: Driver | None = None,
    ) -> None:
        self.config = config
        self.driver = driver or create_driver(config.converter.driver)
        self.client = client or RegistryClient(
            config.provider.source, config.provider.registry, docker_config=config.provider.docker_config
        )
        self.store = store or ContentStore.for_work_dir(config.provider.work_dir)
        self.platforms = PlatformMatcher.parse(config.converter.platform_list)
        # Layers of one image convert in parallel; formats use threads inside too, so more than the cores
        # only adds memory.
        self.layer_workers = max(1, min(config.converter.worker, os.cpu_count() or 1))
        self.scratch_dir = Path(config.provider.work_dir) / "tmp"
        cache_size = config.provider.cache_size
        self.cache = (
            LayerCache(Path(config.provider.work_dir) / "cache.db", cache_size) if cache_size else None
        )

    def close(self) -> None:
        self.client.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> Converter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def driver_name(self) -> str:
        return self.driver.name

    @property
    def driver_version(self) -> str:
        return self.driver.version

    def driver_key(self) -> str:
        """Identifies the output format exactly: driver, version and the options that change output."""
        return self.driver.key()

    def target_for(self, source: str) -> str:
        return str(target_reference(parse_image_ref(source), self.config.converter.tag_suffix))

    # ------------------------------------------------------------------------------------------ inspect

    def inspect(self, source: str) -> SourceInspection:
        """Resolve ``source`` and tell whether it is our own output and whether its target exists."""
        src_ref = parse_image_ref(source)
        repo = open_repository(src_ref, self.client)
        data, media_type, digest = repo.get_manifest(_reference_of(src_ref))
        document = parse_manifest(data, media_type)
        target = self.target_for(source)
        reason = keys.accelerated_reason(document)
        suffix = self.config.converter.tag_suffix
        tag = src_ref.tag
        if reason is None and suffix and tag and tag.endswith(suffix):
            reason = f"its tag ends with the target suffix {suffix!r}"
        if reason is None and tag and tag == self.config.converter.cache_tag:
            reason = "it is the remote layer cache image"
        if reason is None and isinstance(document, Index) and document.manifests:
            # Accelerated children (a Nydus or eStargz platform manifest) mark the whole index.
            child = document.manifests[0]
            child_data, child_type, _ = repo.get_manifest(child.digest)
            reason = keys.accelerated_reason(parse_manifest(child_data, child_type))
        return SourceInspection(
            reference=str(src_ref),
            digest=digest,
            media_type=document.media_type or media_type,
            is_index=isinstance(document, Index),
            target=target,
            converted_by_us=reason,
            existing_target_digest=self._existing_target(target, digest),
        )

    def _existing_target(self, target: str, source_digest: str) -> str | None:
        tgt_ref = parse_image_ref(target)
        try:
            repo = open_repository(tgt_ref, self.client)
            data, media_type, digest = repo.get_manifest(_reference_of(tgt_ref))
        except NotFoundError:
            return None
        document = parse_manifest(data, media_type)
        marks = document.annotations
        if (
            marks.get(keys.SOURCE_DIGEST) == source_digest
            and marks.get(keys.DRIVER_NAME) == self.driver.name
            and marks.get(keys.DRIVER_VERSION) == self.driver.version
            and marks.get(keys.DRIVER_OPTIONS, "") == self.driver.options_key()
        ):
            return digest
        return None

    # ------------------------------------------------------------------------------------------ convert

    def convert(
        self,
        source: str,
        *,
        target: str | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> ConversionResult:
        """Convert ``source`` and push the result to ``target`` (default: from the rules)."""
        started = time.monotonic()
        src_ref = parse_image_ref(source)
        tgt_ref = parse_image_ref(target) if target else parse_image_ref(self.target_for(source))
        if isinstance(tgt_ref, Reference) and tgt_ref.digest:
            raise ConversionError(f"target {tgt_ref} must be a tag, not a digest")
        src_repo = open_repository(src_ref, self.client)
        tgt_repo = open_repository(tgt_ref, self.client, create=True)
        counters = Counters(progress)
        with self.store.lease() as lease:
            run = _Conversion(self, src_repo, tgt_repo, lease, counters, cancel)
            result = run.execute(str(src_ref), _reference_of(src_ref), str(tgt_ref), _tag_of(tgt_ref))
        self._collect_garbage()
        result.timings["total"] = round(time.monotonic() - started, 3)
        return result

    def _collect_garbage(self) -> None:
        threshold = self.config.provider.gcpolicy.threshold
        try:
            if threshold and self.store.total_size() > threshold:
                gc = self.store.gc(threshold)
                log.info("content store gc: removed %d blobs, %d bytes", len(gc.removed), gc.freed)
        except OSError as exc:  # GC is housekeeping: it must never fail a finished conversion
            log.warning("content store gc failed: %s", exc)


@dataclass
class _Pushable:
    """One converted manifest and the blobs it needs in the target."""

    image: ConvertedImage
    source_size: int
    platform: Platform | None
    source_layers: list[str]


class _Conversion:
    """One conversion run; also the DriverContext the driver works through."""

    def __init__(
        self,
        converter: Converter,
        source: ImageRepository,
        target: ImageRepository,
        lease: Lease,
        counters: Counters,
        cancel: threading.Event | None,
    ) -> None:
        self.converter = converter
        self.driver = converter.driver
        self.store = converter.store
        self.source = source
        self.target = target
        self.lease = lease
        self.counters = counters
        self.cancel = cancel
        self.notes: list[str] = []
        self._notes_lock = threading.Lock()
        self.caches = CacheSession(
            converter.cache, self._remote_cache(), converter.store, target, converter.client, converter.driver
        )
        self._pool = ThreadPoolExecutor(converter.layer_workers, thread_name_prefix="layer")

    # ------------------------------------------------------------------ DriverContext

    def open_layer(self, layer: Descriptor) -> BinaryIO:
        self.ensure_local(layer)
        return self.store.open(layer.digest)

    def new_blob(self) -> BlobWriter:
        return self.store.writer(lease=self.lease)

    def put_blob(self, data: bytes) -> str:
        return self.store.write_bytes(data, lease=self.lease)

    def read_blob(self, digest: str) -> bytes:
        if self.store.has(digest):
            return self.store.read_bytes(digest)
        data = self.source.read_blob(digest)
        self.store.write_bytes(data, digest, lease=self.lease)
        return data

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()

    def check_canceled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CanceledError("conversion canceled")

    def advance(self, stage: str, nbytes: int) -> None:
        self.counters.advance(stage, nbytes)

    def note(self, message: str) -> None:
        with self._notes_lock:
            self.notes.append(message)

    def _remote_cache(self) -> RemoteCache | None:
        config = self.converter.config
        tag = config.converter.cache_tag
        if not tag or not isinstance(self.target, RegistryRepository):
            return None
        return RemoteCache(
            self.converter.client,
            self.target.host,
            self.target.repository,
            tag,
            config.provider.cache_version,
            self.driver.key(),
            config.provider.cache_size or 200,
        )

    def cached_layer(self, layer: Descriptor, driver_key: str) -> CachedLayer | None:
        return self.caches.lookup(layer, driver_key)

    def remember_layer(self, layer: Descriptor, driver_key: str, converted: CachedLayer) -> None:
        self.caches.remember(layer, driver_key, converted)

    def cached_image_layer(self, key: str, driver_key: str) -> CachedLayer | None:
        return self.caches.lookup_local(key, driver_key)

    def remember_image_layer(self, key: str, driver_key: str, layer: CachedLayer) -> None:
        self.caches.remember(Descriptor(mt.OCI_LAYER, key, 0), driver_key, layer)

    @property
    def scratch_dir(self) -> str:
        path = self.converter.scratch_dir
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    # ------------------------------------------------------------------ pulling

    def ensure_local(self, blob: Descriptor) -> None:
        """Make ``blob`` present in the content store (and leased), pulling it from the source if needed."""
        self.lease.add(blob.digest)
        if self.store.has(blob.digest):
            return
        with self.store.fetch_lock(blob.digest):
            if self.store.has(blob.digest):
                return
            self.check_canceled()
            started = time.monotonic()
            origin = self.caches.origins.get(blob.digest, self.source)
            counter = self.counters.blob("pull", blob)
            with self.store.writer(blob.digest, blob.size, lease=self.lease) as sink:
                origin.fetch_blob(blob, sink, counter.advance)
                sink.commit()
            counter.done("pulled")
            self.counters.add_time("pull", time.monotonic() - started)

    # ------------------------------------------------------------------ the run

    def execute(
        self, source_name: str, reference: str, target_name: str, target_tag: str
    ) -> ConversionResult:
        try:
            data, media_type, source_digest = self.source.get_manifest(reference)
            document = parse_manifest(data, media_type)
            convert_started = time.monotonic()
            self.counters.stage("convert", None)
            top: Manifest | Index | None
            if isinstance(document, Index):
                top, pushables = self._convert_index(document, source_name, source_digest)
            else:
                pushable = self._convert_manifest(document, source_name, source_digest, None)
                pushables = [pushable]
                top = self._single_top(pushable, source_name, source_digest)
            self.counters.add_time("convert", time.monotonic() - convert_started)
            if top is None:
                # Only referrers are added (SOCI v1): they must live beside their subject.
                self.target = self.source
            push_started = time.monotonic()
            target_digest = self._push(top, pushables, target_tag) or source_digest
            self.counters.add_time("push", time.monotonic() - push_started)
            self.caches.record([(p.platform, p.source_layers) for p in pushables])
            self.counters.finish()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return ConversionResult(
            source=source_name,
            target=source_name if top is None else target_name,
            source_digest=source_digest,
            target_digest=target_digest,
            source_size=sum(p.source_size for p in pushables),
            target_size=sum(_image_size(p.image.manifest) for p in pushables),
            driver=self.driver.name,
            driver_version=self.driver.version,
            timings={k: round(v, 3) for k, v in self.counters.seconds.items()},
            bytes_in=self.counters.bytes["pull"],
            bytes_out=self.counters.bytes["push"],
            notes=list(self.notes),
            platforms=[str(p.platform) for p in pushables if p.platform is not None],
            cache_hits=self.caches.hits,
            cache_misses=self.caches.misses,
        )

    def _convert_manifest(
        self, manifest: Manifest, source_name: str, digest: str, platform: Platform | None
    ) -> _Pushable:
        self.check_canceled()
        config = ImageConfig.from_json(self.read_blob(manifest.config.digest))
        image = SourceImage(
            reference=source_name,
            manifest=manifest,
            digest=digest,
            config=config,
            platform=platform or (config.platform() if config.os else None),
        )
        image.annotations = {
            **self._marks(source_name, digest),
            **self.driver.manifest_annotations(source_name, digest),
        }
        self.counters.expect("pull", manifest.layers)
        converted = self.driver.convert(image, self)
        layers = [layer.digest for layer in manifest.layers]
        return _Pushable(converted, _image_size(manifest), image.platform, layers)

    def _single_top(
        self, pushable: _Pushable, source_name: str, source_digest: str
    ) -> Manifest | Index | None:
        """What the tag points at for a single-manifest source: the manifest, or an index when the driver
        lists artifacts beside it (SOCI v2); None when the image stays unchanged (SOCI v1)."""
        image = pushable.image
        if image.unchanged:
            return None
        if not any(a.index_entry is not None for a in image.artifacts):
            return image.manifest
        entry = image.manifest.descriptor(
            platform=pushable.platform,
            annotations=dict(image.manifest.annotations),
            artifact_type=image.entry_artifact_type,
        )
        return Index(
            manifests=_entries(entry, image),
            media_type=mt.OCI_INDEX,
            annotations=self._index_marks(source_name, source_digest),
        )

    def _convert_index(
        self, index: Index, source_name: str, source_digest: str
    ) -> tuple[Index | None, list[_Pushable]]:
        matcher = self.converter.platforms
        selected = [
            d for d in index.manifests if d.media_type in mt.MANIFESTS and matcher.matches(d.platform)
        ]
        if not selected:
            available = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
            raise ConversionError(
                f"no manifest of {source_name} matches platforms {matcher} (has: {available})"
            )
        pushables: list[_Pushable] = []
        entries: list[Descriptor] = []
        for entry in selected:
            data, media_type, digest = self.source.get_manifest(entry.digest)
            manifest = Manifest.from_json(data, media_type)
            pushable = self._convert_manifest(manifest, source_name, digest, entry.platform)
            pushables.append(pushable)
            converted = pushable.image.manifest
            own = converted.descriptor(
                platform=entry.platform or pushable.platform,
                annotations=dict(entry.annotations),
                artifact_type=pushable.image.entry_artifact_type or converted.artifact_type,
            )
            entries.extend(_entries(own, pushable.image))
        if all(p.image.unchanged for p in pushables):
            return None, pushables
        rebuilt = Index(manifests=entries, media_type=mt.OCI_INDEX, annotations=dict(index.annotations))
        rebuilt = self.driver.finish_index(rebuilt, index, self)
        rebuilt.annotations.update(self._index_marks(source_name, source_digest))
        return rebuilt, pushables

    def _marks(self, source_name: str, source_digest: str) -> dict[str, str]:
        marks = {
            keys.DRIVER_NAME: self.driver.name,
            keys.DRIVER_VERSION: self.driver.version,
            keys.SOURCE_DIGEST: source_digest,
            keys.SOURCE_REFERENCE: source_name,
        }
        if options := self.driver.options_key():
            marks[keys.DRIVER_OPTIONS] = options
        return marks

    def _index_marks(self, source_name: str, source_digest: str) -> dict[str, str]:
        # The driver's annotations go on the index too (upstream does so for Nydus since its #369).
        return {
            **self.driver.manifest_annotations(source_name, source_digest),
            **self._marks(source_name, source_digest),
        }

    # ------------------------------------------------------------------ pushing

    def _push(self, top: Manifest | Index | None, pushables: list[_Pushable], tag: str) -> str | None:
        """Push everything in safe order; returns the digest the tag now points at (None: no tag moved)."""
        blobs: dict[str, Descriptor] = {}
        documents = [p.image.manifest for p in pushables if not p.image.unchanged]
        artifacts = [a for p in pushables for a in p.image.artifacts]
        for document in [*documents, *(a.manifest for a in artifacts)]:
            for blob in [*document.layers, document.config]:
                blobs.setdefault(blob.digest, blob)
        self.counters.expect("push", blobs.values())
        configs = {d.config.digest for d in [*documents, *(a.manifest for a in artifacts)]}
        # Layers first, then configs: a config is what makes a manifest's content look complete.
        self.map(self._push_blob, [b for d, b in blobs.items() if d not in configs])
        self.map(self._push_blob, [b for d, b in blobs.items() if d in configs])
        self.check_canceled()
        if isinstance(top, Index):
            for manifest in documents:
                self._push_document(manifest.to_bytes(), manifest.media_type or mt.OCI_MANIFEST)
        for artifact in artifacts:
            self._push_artifact(artifact.manifest)
        self.check_canceled()
        if top is None:
            return None
        data = top.to_bytes()
        self.target.put_manifest(data, top.media_type or mt.OCI_MANIFEST, tag)
        return Descriptor.of(data, top.media_type or mt.OCI_MANIFEST).digest

    def _push_document(self, data: bytes, media_type: str) -> str:
        digest = Descriptor.of(data, media_type).digest
        self.target.put_manifest(data, media_type, digest)
        return digest

    def _push_artifact(self, manifest: Manifest) -> None:
        media_type = manifest.media_type or mt.OCI_MANIFEST
        data = manifest.to_bytes()
        self._push_document(data, media_type)
        if manifest.subject is not None:
            descriptor = Descriptor.of(
                data,
                media_type,
                artifact_type=manifest.artifact_type or manifest.config.media_type,
                annotations=dict(manifest.annotations),
            )
            self.target.referrers_fallback(manifest.subject.digest, descriptor)

    def _push_blob(self, blob: Descriptor) -> None:
        self.check_canceled()

        def open_source() -> BinaryIO:
            if not self.store.has(blob.digest):
                # A layout source is already a local file: upload from it instead of copying it first.
                local = self.caches.origins.get(blob.digest, self.source).open_local(blob.digest)
                if local is not None:
                    return local
            self.ensure_local(blob)
            return self.store.open(blob.digest)

        origin = self.caches.origins.get(blob.digest, self.source)
        verified = None
        if isinstance(self.target, LayoutRepository) and not isinstance(origin, LayoutRepository):
            # Into a layout, a remote blob goes through the store once and is then linked, not copied.
            self.ensure_local(blob)
        if self.store.has(blob.digest):
            verified = self.store.path(blob.digest)
        counter = self.counters.blob("push", blob)
        outcome = self.target.push_blob(blob, open_source, origin, counter.advance, verified)
        counter.done(outcome)
        log.debug("blob %s: %s", blob.digest, outcome)


def _entries(own: Descriptor, image: ConvertedImage) -> list[Descriptor]:
    """The index entries of one converted image: artifacts listed first, its own, the other artifacts."""
    first = [a.index_entry for a in image.artifacts if a.index_entry is not None and a.first]
    after = [a.index_entry for a in image.artifacts if a.index_entry is not None and not a.first]
    return [*first, own, *after]


def _image_size(manifest: Manifest) -> int:
    return manifest.config.size + sum(layer.size for layer in manifest.layers)


def _reference_of(ref: Reference | LayoutReference) -> str:
    if isinstance(ref, LayoutReference):
        return ref.tag or ""
    return ref.reference


def _tag_of(ref: Reference | LayoutReference) -> str:
    tag = ref.tag
    if not tag:
        raise ConversionError(f"target {ref} needs a tag")
    return tag
