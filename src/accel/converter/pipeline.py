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
from accel.converter.progress import ConversionResult, Counters, Progress, SourceInspection
from accel.converter.repositories import ImageRepository, open_repository
from accel.converter.rules import target_reference
from accel.drivers import Driver, create_driver
from accel.drivers.base import ConvertedImage, SourceImage
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

    def close(self) -> None:
        self.client.close()

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
        return f"{self.driver.name}/{self.driver.version}/{self.driver.options_key()}"

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
            with self.store.writer(blob.digest, blob.size, lease=self.lease) as sink:
                self.source.fetch_blob(blob, sink, lambda n: self.counters.advance("pull", n))
                sink.commit()
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
            top: Manifest | Index
            if isinstance(document, Index):
                top, pushables = self._convert_index(document, source_name, source_digest)
            else:
                pushable = self._convert_manifest(document, source_name, source_digest, None)
                self._annotate(pushable.image.manifest, source_name, source_digest, pushable.image)
                top, pushables = pushable.image.manifest, [pushable]
            self.counters.add_time("convert", time.monotonic() - convert_started)
            push_started = time.monotonic()
            target_digest = self._push(top, pushables, target_tag)
            self.counters.add_time("push", time.monotonic() - push_started)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return ConversionResult(
            source=source_name,
            target=target_name,
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
        converted = self.driver.convert(image, self)
        converted.manifest.annotations.update(self.driver.manifest_annotations(image))
        return _Pushable(converted, _image_size(manifest), image.platform)

    def _convert_index(
        self, index: Index, source_name: str, source_digest: str
    ) -> tuple[Index, list[_Pushable]]:
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
            self._annotate(pushable.image.manifest, source_name, digest, pushable.image)
            pushables.append(pushable)
            converted = pushable.image.manifest
            entries.append(
                converted.descriptor(
                    platform=entry.platform or pushable.platform,
                    annotations=dict(entry.annotations),
                    artifact_type=converted.artifact_type,
                )
            )
            entries.extend(pushable.image.index_entries)
        rebuilt = Index(manifests=entries, media_type=mt.OCI_INDEX, annotations=dict(index.annotations))
        rebuilt = self.driver.finish_index(rebuilt, index, self)
        rebuilt.annotations.update(self._marks(source_name, source_digest))
        return rebuilt, pushables

    def _marks(self, source_name: str, source_digest: str) -> dict[str, str]:
        return {
            keys.DRIVER_NAME: self.driver.name,
            keys.DRIVER_VERSION: self.driver.version,
            keys.SOURCE_DIGEST: source_digest,
            keys.SOURCE_REFERENCE: source_name,
        }

    def _annotate(self, manifest: Manifest, source_name: str, digest: str, image: ConvertedImage) -> None:
        manifest.annotations.update(self._marks(source_name, digest))

    # ------------------------------------------------------------------ pushing

    def _push(self, top: Manifest | Index, pushables: list[_Pushable], tag: str) -> str:
        blobs: dict[str, Descriptor] = {}
        for p in pushables:
            for layer in p.image.manifest.layers:
                blobs.setdefault(layer.digest, layer)
        configs = {p.image.manifest.config.digest: p.image.manifest.config for p in pushables}
        for p in pushables:
            for artifact in p.image.referrers:
                for blob in [*artifact.manifest.layers, artifact.manifest.config]:
                    blobs.setdefault(blob.digest, blob)
        self.counters.stage(
            "push", sum(b.size for b in blobs.values()) + sum(c.size for c in configs.values())
        )
        self.map(self._push_blob, list(blobs.values()))
        self.map(self._push_blob, [c for c in configs.values() if c.digest not in blobs])
        self.check_canceled()
        for p in pushables:
            for extra in p.image.index_entries:
                self._push_document(self.store.read_bytes(extra.digest), extra.media_type, extra.digest)
            if isinstance(top, Index):
                manifest = p.image.manifest
                self._push_document(manifest.to_bytes(), manifest.media_type or mt.OCI_MANIFEST, None)
        for p in pushables:
            for artifact in p.image.referrers:
                self._push_referrer(artifact.manifest, artifact.tag)
        self.check_canceled()
        data = top.to_bytes()
        self.target.put_manifest(data, top.media_type or mt.OCI_MANIFEST, tag)
        return Descriptor.of(data, top.media_type or mt.OCI_MANIFEST).digest

    def _push_document(self, data: bytes, media_type: str, digest: str | None) -> None:
        descriptor = Descriptor.of(data, media_type)
        if digest is not None and descriptor.digest != digest:
            raise ConversionError(f"manifest {digest} changed while pushing")
        self.target.put_manifest(data, media_type, descriptor.digest)

    def _push_referrer(self, manifest: Manifest, tag: str | None) -> None:
        data = manifest.to_bytes()
        media_type = manifest.media_type or mt.OCI_MANIFEST
        descriptor = Descriptor.of(data, media_type, artifact_type=manifest.artifact_type or None)
        self.target.put_manifest(data, media_type, tag or descriptor.digest)
        if manifest.subject is not None:
            if manifest.annotations:
                descriptor = descriptor.replace(annotations=dict(manifest.annotations))
            self.target.referrers_fallback(manifest.subject.digest, descriptor)

    def _push_blob(self, blob: Descriptor) -> None:
        self.check_canceled()

        def open_source() -> BinaryIO:
            if not self.store.has(blob.digest):
                # A layout source is already a local file: upload from it instead of copying it first.
                local = self.source.open_local(blob.digest)
                if local is not None:
                    return local
            self.ensure_local(blob)
            return self.store.open(blob.digest)

        outcome = self.target.push_blob(
            blob, open_source, self.source, lambda n: self.counters.advance("push", n)
        )
        log.debug("blob %s: %s", blob.digest, outcome)


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
