"""The conversion pipeline: resolve the source once, select platforms, convert every layer (from the
layer cache where it can), finish the image with the driver, push.

Push order is what keeps a failed or killed conversion harmless: every blob first (layers, then configs),
then the platform manifests by digest, then referrers, and the tagged manifest or index last. Until that
last PUT nothing points at the new content, so an interrupted run leaves no target tag. A target tag that
holds something this service did not make from the same source with the same driver is never overwritten
unless ``converter.overwrite`` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from accel.config import Config
from accel.content import ContentStore, Lease
from accel.converter.cache import (
    CachedLayer,
    CacheSession,
    LayerCache,
    LayerIndex,
    RemoteCache,
    RemoteRecord,
)
from accel.converter.context import ConversionIO, OtherImages
from accel.converter.progress import (
    ConversionResult,
    Counters,
    Progress,
    ResolvedSource,
    SourceInspection,
)
from accel.converter.repositories import (
    ImageRepository,
    LayoutRepository,
    RegistryRepository,
    open_repository,
)
from accel.converter.rules import target_reference
from accel.converter.uploads import StreamedUploads
from accel.database import DatabaseUnavailableError, PostgresDatabase, is_postgres_dsn
from accel.drivers import Driver, create_driver
from accel.drivers.base import ConvertedImage, ConvertedLayer, ImageLayer, SourceImage
from accel.errors import AccelError, ConversionError, FormatError, InvalidReferenceError, NotFoundError
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, ImageConfig, Index, Manifest, parse_manifest
from accel.oci.platform import Platform, PlatformMatcher
from accel.oci.reference import LayoutReference, Reference, parse_image_ref
from accel.registry import RegistryClient

if TYPE_CHECKING:
    from accel.converter.check import CheckReport

log = logging.getLogger(__name__)

_UPLOADS = 4
"""Blob uploads at once per converter (the network's share; a registry serves a few streams well)."""

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
        driver: Driver[Any] | None = None,
        database: PostgresDatabase | None = None,
    ) -> None:
        """``database``: the shared PostgreSQL for the layer-cache index (acceld passes its own); opened
        here from ``provider.database`` when that names one and none is given."""
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
        # One scheduler per converter: layers of every image it converts share the cores; uploads wait on
        # the network, so they have threads of their own and start as soon as a layer is converted.
        self.layer_pool = ThreadPoolExecutor(self.layer_workers, thread_name_prefix="layer")
        self.upload_pool = ThreadPoolExecutor(_UPLOADS, thread_name_prefix="upload")
        self.scratch_dir = Path(config.provider.work_dir) / "tmp"
        self._own_database: PostgresDatabase | None = None
        self.cache = self._layer_index(config, database)

    def _layer_index(self, config: Config, database: PostgresDatabase | None) -> LayerIndex | None:
        cache_size = config.provider.cache_size
        if not cache_size:
            return None
        if database is None and is_postgres_dsn(config.provider.database):
            try:
                database = self._own_database = PostgresDatabase(config.provider.database, max_connections=4)
            except DatabaseUnavailableError as exc:
                # A one-time conversion needs the shared index only as a hint: go on with the local one.
                log.warning("shared layer cache unavailable, using the local one: %s", exc.message)
        if database is not None:
            from accel.converter.cache_postgres import PostgresLayerCache

            return PostgresLayerCache(database, cache_size)
        return LayerCache(Path(config.provider.work_dir) / "cache.db", cache_size)

    def close(self) -> None:
        self.layer_pool.shutdown(wait=True, cancel_futures=True)
        self.upload_pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
        if self.cache is not None:
            self.cache.close()
        if self._own_database is not None:
            self._own_database.close()

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

    # ------------------------------------------------------------------------------------------ resolve

    def resolve(self, source: str, *, digest: str | None = None) -> ResolvedSource:
        """Fetch the manifest (or index) ``source`` names — at ``digest`` when the caller knows which one
        it means (a webhook names the pushed digest), so a tag moved since is not followed."""
        src_ref = parse_image_ref(source)
        repo = open_repository(src_ref, self.client)
        data, media_type, found = repo.get_manifest(digest or _reference_of(src_ref))
        return ResolvedSource(str(src_ref), found, media_type, data)

    # ------------------------------------------------------------------------------------------ inspect

    def inspect(self, source: str, *, digest: str | None = None) -> SourceInspection:
        """Resolve ``source`` and tell whether it is our own output and whether its target exists."""
        resolved = self.resolve(source, digest=digest)
        src_ref = parse_image_ref(resolved.reference)
        document = parse_manifest(resolved.data, resolved.media_type)
        target = self.target_for(resolved.reference)
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
            repo = open_repository(src_ref, self.client)
            child_data, child_type, _ = repo.get_manifest(child.digest)
            reason = keys.accelerated_reason(parse_manifest(child_data, child_type))
        return SourceInspection(
            reference=resolved.reference,
            digest=resolved.digest,
            media_type=document.media_type or resolved.media_type,
            is_index=isinstance(document, Index),
            target=target,
            resolved=resolved,
            converted_by_us=reason,
            existing_target_digest=self._existing_target(target, resolved.digest),
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

    # ------------------------------------------------------------------------------------------ check

    def check(
        self,
        target: str,
        *,
        source: str | None = None,
        compare: bool = True,
        lazy: Sequence[str] = (),
    ) -> CheckReport:
        """Check a converted image (``accelctl check``): every layer by its format's reader, unless
        ``compare`` is off its file tree against ``source`` (default: the source our annotations name),
        and the ``lazy`` paths read through the layers' indexes as a lazy-pulling snapshotter would."""
        from accel.converter.check import ImageChecker, check_reference

        resolved = self.resolve(target)
        given = self.resolve(source) if source else None
        with self.store.lease() as lease:
            checker = ImageChecker(self.store, lease, self.scratch_dir)
            return check_reference(self.client, checker, resolved, source=given, compare=compare, lazy=lazy)

    # ------------------------------------------------------------------------------------------ convert

    def convert(
        self,
        source: str | ResolvedSource,
        *,
        target: str | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> ConversionResult:
        """Convert ``source`` and push the result to ``target`` (default: from the rules). A reference is
        resolved here; a ``ResolvedSource`` (from ``resolve`` or ``inspect``) is converted as it was
        resolved."""
        started = time.monotonic()
        resolved = source if isinstance(source, ResolvedSource) else self.resolve(source)
        src_ref = parse_image_ref(resolved.reference)
        tgt_ref = parse_image_ref(target or self.target_for(resolved.reference))
        if isinstance(tgt_ref, Reference) and tgt_ref.digest:
            raise InvalidReferenceError(f"target {tgt_ref} must be a tag, not a digest")
        tag = tgt_ref.tag
        if not tag:
            raise InvalidReferenceError(f"target {tgt_ref} needs a tag")
        src_repo = open_repository(src_ref, self.client)
        new_layout = (
            tgt_ref.path if isinstance(tgt_ref, LayoutReference) and not tgt_ref.path.exists() else None
        )
        tgt_repo = open_repository(tgt_ref, self.client, create=True)
        counters = Counters(progress)
        try:
            with self.store.lease() as lease:
                run = _Conversion(self, resolved, src_repo, tgt_repo, lease, counters, cancel)
                result = run.execute(str(tgt_ref), tag)
        except BaseException:
            # A layout directory this run created holds only parts of a failed conversion.
            if new_layout is not None:
                shutil.rmtree(new_layout, ignore_errors=True)
            raise
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
    source: Manifest
    source_digest: str

    @property
    def source_layers(self) -> list[str]:
        return [layer.digest for layer in self.source.layers]


class _Conversion:
    """One conversion run: every layer through the cache or the driver, the image finished, pushed."""

    def __init__(
        self,
        converter: Converter,
        source: ResolvedSource,
        source_repo: ImageRepository,
        target: ImageRepository,
        lease: Lease,
        counters: Counters,
        cancel: threading.Event | None,
    ) -> None:
        self.converter = converter
        self.driver = converter.driver
        self.driver_key = converter.driver.key()
        self.store = converter.store
        self.resolved = source
        self.source = source_repo
        self.target = target
        self.counters = counters
        # A new blob's upload starts while the driver writes it; a layout target links or copies the
        # committed file instead (nothing to overlap).
        self.streams = (
            StreamedUploads(target, counters, converter.config.provider.registry.upload_chunk_size)
            if isinstance(target, RegistryRepository)
            else None
        )
        self.caches = CacheSession(
            converter.cache if self.driver.caches_layers else None,
            self._remote_cache(),
            converter.store,
            target,
            converter.client,
            self.driver_key,
        )
        self.io = ConversionIO(
            converter.store,
            lease,
            source_repo,
            self.caches.origins,
            counters,
            cancel,
            converter.scratch_dir,
            OtherImages(self._open_other),
            self.streams,
        )
        self.notes: list[str] = []
        self.cache_hits = 0
        self.cache_saved = 0
        self.cache_misses = 0
        self._count_lock = threading.Lock()
        self._uploads: dict[str, Future[None]] = {}
        self._uploads_lock = threading.Lock()

    def _open_other(self, reference: str) -> tuple[ImageRepository, str]:
        """An image a driver's options name, through the same client as sources (configured hosts only)."""
        ref = parse_image_ref(reference)
        return open_repository(ref, self.converter.client), _reference_of(ref)

    def _remote_cache(self) -> RemoteCache | None:
        config = self.converter.config
        tag = config.converter.cache_tag
        if not tag or not self.driver.caches_layers or not isinstance(self.target, RegistryRepository):
            return None
        return RemoteCache(
            self.converter.client,
            self.target.host,
            self.target.repository,
            tag,
            config.provider.cache_version,
            self.driver_key,
            config.provider.cache_size or 200,
        )

    def _map(self, pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        return _results([pool.submit(fn, item) for item in items])

    def _upload(self, blob: Descriptor) -> Future[None]:
        """The upload of ``blob`` to the target, started once."""
        with self._uploads_lock:
            future = self._uploads.get(blob.digest)
            if future is None:
                future = self._uploads[blob.digest] = self.converter.upload_pool.submit(self._push_blob, blob)
            return future

    def _end_uploads(self) -> None:
        """After a failure: uploads not started never will be; running ones finish before the lease goes."""
        with self._uploads_lock:
            futures = list(self._uploads.values())
        for future in futures:
            future.cancel()
        wait(futures)
        if self.streams is not None:
            self.streams.close()

    # ------------------------------------------------------------------ the run

    def execute(self, target_name: str, target_tag: str) -> ConversionResult:
        source_name, source_digest = self.resolved.reference, self.resolved.digest
        failed = True
        try:
            self._check_target(target_name, target_tag)
            document = parse_manifest(self.resolved.data, self.resolved.media_type)
            convert_started = time.monotonic()
            self.counters.stage("convert", None)
            top: Manifest | Index | None
            if isinstance(document, Index):
                top, pushables = self._convert_index(document)
            else:
                pushable = self._convert_manifest(document, source_digest, None)
                pushables = [pushable]
                top = self._single_top(pushable)
            self.counters.span("convert", convert_started, time.monotonic())
            if top is None:
                # Only referrers are added (SOCI v1): they must live beside their subject.
                self.target = self.source
            else:
                self._check_target(target_name, target_tag)
            push_started = time.monotonic()
            target_digest = self._push(top, pushables, target_tag) or source_digest
            self.counters.span("push", push_started, time.monotonic())
            self.caches.record([(p.platform, p.source_layers) for p in pushables])
            self.counters.finish()
            failed = False
        finally:
            if failed:
                self._end_uploads()
            elif self.streams is not None:
                self.streams.close()  # only blobs no manifest lists can still be streaming
        return ConversionResult(
            source=source_name,
            target=source_name if top is None else target_name,
            source_digest=source_digest,
            target_digest=target_digest,
            source_size=sum(p.source_size for p in pushables),
            target_size=sum(_image_size(p.image.manifest) for p in pushables),
            driver=self.driver.name,
            driver_version=self.driver.version,
            timings=self.counters.timings(),
            bytes_in=self.counters.bytes["pull"],
            bytes_out=self.counters.bytes["push"],
            notes=list(self.notes),
            platforms=[str(p.platform) for p in pushables if p.platform is not None],
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            cache_saved=self.cache_saved,
        )

    def _check_target(self, target_name: str, tag: str) -> None:
        """Refuse to move a tag that holds something we did not make from this source with this driver.

        Checked before any work and again just before the tag moves (someone may push meanwhile). A tag
        that holds the source itself (an empty suffix converts in place) is the user's explicit choice.
        """
        if self.converter.config.converter.overwrite:
            return
        current = self.target.find_manifest(tag)
        if current is None or current == self.resolved.digest:
            return
        data, media_type, _ = self.target.get_manifest(current)
        marks = parse_manifest(data, media_type).annotations
        driver, made_from = marks.get(keys.DRIVER_NAME), marks.get(keys.SOURCE_REFERENCE)
        if driver == self.driver.name and made_from and _same_image(made_from, self.resolved.reference):
            return
        if driver and made_from:
            holds = f"made by the {driver} driver from {made_from}"
        else:
            holds = "not made by acceleration-service"
        raise ConversionError(
            f"target {target_name} exists and holds {current} ({holds}); refusing to replace it with the "
            f"{self.driver.name} conversion of {self.resolved.reference} "
            "(pass --force or set converter.overwrite: true to replace it)"
        )

    def _convert_manifest(self, manifest: Manifest, digest: str, platform: Platform | None) -> _Pushable:
        self.io.check_canceled()
        source_name = self.resolved.reference
        config = ImageConfig.from_json(self.io.read_blob(manifest.config.digest))
        image = SourceImage(
            reference=source_name,
            manifest=manifest,
            digest=digest,
            config=config,
            platform=platform or (config.platform() if config.os else None),
        )
        matcher = self.converter.platforms
        if platform is None and not matcher.matches(image.platform):
            # A single-platform source: converting it anyway would tag the wrong platform.
            has = str(image.platform) if image.platform else "no platform"
            raise ConversionError(
                f"{source_name} is a single-platform image ({has}); "
                f"it has none of the platforms asked for ({matcher})"
            )
        image.annotations = {
            **self._marks(source_name, digest),
            **self.driver.manifest_annotations(source_name, digest),
        }
        diff_ids = config.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise ConversionError(
                f"{source_name}: config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers"
            )
        self.counters.expect("pull", manifest.layers)
        pairs = list(zip(manifest.layers, diff_ids, strict=True))
        converted = self._map(self.converter.layer_pool, self._layer, pairs)
        layers = [layer for layer, _ in converted]
        for _, notes in converted:
            self.notes.extend(notes)
        appended = self._image_layers(image, layers)
        finished = self.driver.finish_image(image, layers, appended, self.io)
        self.notes.extend(self.io.notes)
        self.io.notes.clear()
        return _Pushable(finished, _image_size(manifest), image.platform, manifest, digest)

    def _layer(self, pair: tuple[Descriptor, str]) -> tuple[ConvertedLayer[Any], list[str]]:
        """One layer, from the cache or from the driver, with the notes the driver made of it."""
        layer, diff_id = pair
        io = self.io.for_layer()
        io.check_canceled()
        if self.caches.enabled:
            cached = self._cached(layer)
            with self._count_lock:
                if cached is None:
                    self.cache_misses += 1
                else:
                    self.cache_hits += 1
                    self.cache_saved += layer.size
            if cached is not None:
                self._upload(cached.descriptor)
                return cached, io.notes
        try:
            converted = self.driver.convert_layer(layer, diff_id, io)
        except FormatError as exc:
            raise exc.in_layer(layer.digest) from exc
        if self.driver.caches_layers:
            # A new blob: its upload overlaps the conversion of the next layers.
            self.caches.remember(layer.digest, self._entry(converted))
            self._upload(converted.descriptor)
        return converted, io.notes

    def _cached(self, layer: Descriptor) -> ConvertedLayer[Any] | None:
        found = self.caches.lookup(layer)
        if isinstance(found, CachedLayer):
            return ConvertedLayer(found.descriptor, found.diff_id, self.driver.decode_extra(found.extra))
        if isinstance(found, RemoteRecord):
            try:
                extra = self.driver.recover_extra(found.descriptor, found.read_at)
            except AccelError as exc:
                log.warning("remote cache record %s unusable: %s", found.descriptor.digest, exc)
                return None
            converted: ConvertedLayer[Any] = ConvertedLayer(found.descriptor, found.diff_id, extra)
            self.caches.remember(layer.digest, self._entry(converted))
            return converted
        return None

    def _entry(self, converted: ConvertedLayer[Any]) -> CachedLayer:
        return CachedLayer(converted.descriptor, converted.diff_id, self.driver.encode_extra(converted.extra))

    def _image_layers(self, image: SourceImage, layers: list[ConvertedLayer[Any]]) -> list[ImageLayer]:
        """The driver's whole-image layers, from the cache when the same source layers were converted
        together before: re-converting an image then costs no merge (a Nydus bootstrap of 100k files takes
        seconds). Not counted as layer cache hits or misses."""
        sources = "\n".join([self.driver_key, *(layer.digest for layer in image.manifest.layers)])
        key = "sha256:" + hashlib.sha256(sources.encode()).hexdigest()
        cached = self.caches.lookup_image(key) if self.driver.caches_layers else None
        if cached is not None:
            return [ImageLayer(cached.descriptor, cached.diff_id, json.loads(cached.extra))]
        appended = self.driver.image_layers(image, layers, self.io)
        if len(appended) == 1 and self.driver.caches_layers:
            layer = appended[0]
            self.caches.remember(
                key, CachedLayer(layer.descriptor, layer.diff_id, json.dumps(layer.history).encode())
            )
        return appended

    def _single_top(self, pushable: _Pushable) -> Manifest | Index | None:
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
            manifests=_entries(entry, image), media_type=mt.OCI_INDEX, annotations=self._index_marks()
        )

    def _convert_index(self, index: Index) -> tuple[Index | None, list[_Pushable]]:
        source_name = self.resolved.reference
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
            pushable = self._convert_manifest(manifest, digest, entry.platform)
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
        rebuilt = self.driver.finish_index(rebuilt, index, self.io)
        rebuilt.annotations.update(self._index_marks())
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

    def _index_marks(self) -> dict[str, str]:
        # The driver's annotations go on the index too (upstream does so for Nydus since its #369).
        source_name, source_digest = self.resolved.reference, self.resolved.digest
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
        for blob in (b for p in pushables if not p.image.unchanged for b in p.image.required_blobs):
            blobs.setdefault(blob.digest, blob)
        self.counters.expect("push", blobs.values())
        configs = {d.config.digest for d in [*documents, *(a.manifest for a in artifacts)]}
        # Layers first, then configs: a config is what makes a manifest's content look complete.
        _results([self._upload(b) for d, b in blobs.items() if d not in configs])
        _results([self._upload(b) for d, b in blobs.items() if d in configs])
        self.io.check_canceled()
        if self.converter.config.converter.verify:
            # Before any manifest: a referrer (SOCI v1) is visible as soon as it is pushed.
            self._verify(pushables)
        if isinstance(top, Index):
            for manifest in documents:
                self._push_document(manifest.to_bytes(), manifest.media_type or mt.OCI_MANIFEST)
        for artifact in artifacts:
            self._push_artifact(artifact.manifest)
        self.io.check_canceled()
        if top is None:
            return None
        data = top.to_bytes()
        self.target.put_manifest(data, top.media_type or mt.OCI_MANIFEST, tag)
        return Descriptor.of(data, top.media_type or mt.OCI_MANIFEST).digest

    def _verify(self, pushables: list[_Pushable]) -> None:
        """``converter.verify``: check every converted image as ``accelctl check`` does, from what was
        uploaded (blobs this run wrote are read from the content store, not downloaded again)."""
        from accel.converter.check import CheckSource, ImageChecker, is_soci_index

        started = time.monotonic()
        checker = ImageChecker(self.store, self.io.lease, self.converter.scratch_dir)
        reports = []
        for p in pushables:
            manifest = p.image.manifest
            digest = Descriptor.of(manifest.to_bytes(), manifest.media_type or mt.OCI_MANIFEST).digest
            indexes = [a.manifest for a in p.image.artifacts if is_soci_index(a.manifest)]
            source = CheckSource(self.source, p.source, f"{self.resolved.reference}@{p.source_digest}")
            reports.append(
                checker.check_image(self.target, manifest, digest, soci_indexes=indexes, source=source)
            )
        self.counters.span("verify", started, time.monotonic())
        failures = [f for report in reports for f in report.findings if not f.ok]
        if failures:
            raise ConversionError(
                f"the converted image failed its check ({failures[0].describe()}); nothing was tagged",
                notes=[f.describe() for f in failures],
            )
        checks = sum(len(report.findings) for report in reports)
        self.notes.append(f"verify: {checks} checks passed")

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
        self.io.check_canceled()
        started = time.monotonic()
        origin = self.io.origin(blob.digest)

        def open_source() -> BinaryIO:
            if not self.store.has(blob.digest):
                # A layout source is already a local file: upload from it instead of copying it first.
                local = origin.open_local(blob.digest)
                if local is not None:
                    return local
            self.io.ensure_local(blob)
            return self.store.open(blob.digest)

        verified = None
        if isinstance(self.target, LayoutRepository) and not isinstance(origin, LayoutRepository):
            # Into a layout, a remote blob goes through the store once and is then linked, not copied.
            self.io.ensure_local(blob)
        if self.store.has(blob.digest):
            verified = self.store.path(blob.digest)
        counter = self.counters.blob("push", blob)
        # SOCI v1 moves the target to the source repository: blobs streamed elsewhere do not count there.
        streams = self.streams if self.streams is not None and self.streams.target is self.target else None
        outcome = streams.outcome(blob.digest) if streams is not None else None
        if outcome is None:
            outcome = self.target.push_blob(blob, open_source, origin, counter.advance, verified)
        counter.done(outcome)
        self.counters.span("push", started, time.monotonic())
        log.debug("blob %s: %s", blob.digest, outcome)


def _results(futures: list[Future[R]]) -> list[R]:
    """Every future's result, in order; on the first failure the ones not started are canceled."""
    try:
        return [f.result() for f in futures]
    finally:
        for f in futures:
            f.cancel()


def _entries(own: Descriptor, image: ConvertedImage) -> list[Descriptor]:
    """The index entries of one converted image: artifacts listed first, its own, the other artifacts."""
    first = [a.index_entry for a in image.artifacts if a.index_entry is not None and a.first]
    after = [a.index_entry for a in image.artifacts if a.index_entry is not None and not a.first]
    return [*first, own, *after]


def _image_size(manifest: Manifest) -> int:
    return manifest.config.size + sum(layer.size for layer in manifest.layers)


def _same_image(recorded: str, source: str) -> bool:
    """Whether a recorded source reference names ``source``'s repository and tag; the registry's address
    may have changed since (a moved or restarted registry serves the same repositories)."""
    try:
        a, b = parse_image_ref(recorded), parse_image_ref(source)
    except InvalidReferenceError:
        return False
    if isinstance(a, Reference) and isinstance(b, Reference):
        return (a.repository, a.tag) == (b.repository, b.tag)
    return a == b


def _reference_of(ref: Reference | LayoutReference) -> str:
    if isinstance(ref, LayoutReference):
        return ref.tag or ""
    return ref.reference
