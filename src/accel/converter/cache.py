"""The converted-layer cache: never convert the same layer twice.

An entry maps (source layer digest, driver key) — the driver key names the driver, its version and every
option that changes its output — to the converted layer's descriptor, its diff_id, the driver's extra
bytes (Nydus: the layer's bootstrap and blob meta) and the places where the converted blob is known to
live (``host/repository`` or ``oci:/path``). A hit lets the converter mount the blob instead of pulling
and converting the source layer.

Entries live in SQLite under ``provider.work_dir`` (shared safely by acceld and accelctl), or, when
``provider.database`` names a PostgreSQL, in that database for every node (``cache_postgres``); either
way bounded by ``provider.cache_size``, least recently used evicted. The cache is a hint, never trusted
blindly: the converter checks that the blob still exists before using an entry and drops entries whose
blob vanished.

``RemoteCache`` is upstream's cache image in the registry (``rules[].cache_tag``), shared by instances and
surviving a lost work_dir; ``CacheSession`` is one conversion's use of both.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from accel.content import ContentStore
from accel.converter.repositories import ImageRepository, LayoutRepository, RegistryRepository
from accel.drivers.base import ReadAt
from accel.errors import AccelError, NotFoundError
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.layout import OCILayout
from accel.oci.manifest import Descriptor, Index, Manifest, parse_manifest
from accel.oci.platform import Platform
from accel.oci.reference import LayoutReference, parse_image_ref
from accel.registry import RegistryClient

log = logging.getLogger(__name__)
DRIVER_KEY: Final = "io.goharbor.artifact.v1alpha1.acceleration.driver.key"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    source_digest TEXT NOT NULL,
    driver_key TEXT NOT NULL,
    descriptor TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    extra BLOB NOT NULL,
    locations TEXT NOT NULL,
    last_used REAL NOT NULL,
    PRIMARY KEY (source_digest, driver_key)
);
CREATE INDEX IF NOT EXISTS layers_last_used ON layers(last_used);
"""


@dataclass(frozen=True)
class CachedLayer:
    """A converted layer as the caches keep it: ``extra`` is the driver's encoding of the layer's extra."""

    descriptor: Descriptor
    diff_id: str
    extra: bytes = b""


@dataclass(frozen=True)
class RemoteRecord:
    """A converted layer known from the remote cache image only: the driver reads its extra from the blob
    through ``read_at`` (Nydus: the bootstrap in the blob's trailer)."""

    descriptor: Descriptor
    diff_id: str
    read_at: ReadAt


@dataclass
class CacheEntry:
    descriptor: Descriptor
    diff_id: str
    extra: bytes
    locations: list[str]

    @classmethod
    def from_row(cls, descriptor: str, diff_id: str, extra: bytes, locations: str) -> CacheEntry:
        """An entry from its stored columns (descriptor and locations as JSON), in either index."""
        return cls(Descriptor.from_dict(json.loads(descriptor)), diff_id, bytes(extra), json.loads(locations))


class LayerIndex(Protocol):
    """Where the converted-layer entries are kept; thread-safe."""

    def get(self, source_digest: str, driver_key: str) -> CacheEntry | None: ...
    def put(
        self,
        source_digest: str,
        driver_key: str,
        descriptor: Descriptor,
        diff_id: str,
        extra: bytes,
        locations: list[str],
    ) -> None: ...
    def add_location(self, source_digest: str, driver_key: str, location: str) -> None: ...
    def discard(self, source_digest: str, driver_key: str) -> None: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...


class LayerCache:
    """The embedded index: one SQLite file; several processes may share it (SQLite locking, WAL)."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, source_digest: str, driver_key: str) -> CacheEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT descriptor, diff_id, extra, locations FROM layers "
                "WHERE source_digest=? AND driver_key=?",
                (source_digest, driver_key),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE layers SET last_used=? WHERE source_digest=? AND driver_key=?",
                (time.time(), source_digest, driver_key),
            )
        return CacheEntry.from_row(*row)

    def put(
        self,
        source_digest: str,
        driver_key: str,
        descriptor: Descriptor,
        diff_id: str,
        extra: bytes,
        locations: list[str],
    ) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        source_digest,
                        driver_key,
                        json.dumps(descriptor.to_dict()),
                        diff_id,
                        extra,
                        json.dumps(sorted(set(locations))),
                        time.time(),
                    ),
                )
                self._db.execute(
                    "DELETE FROM layers WHERE rowid IN "
                    "(SELECT rowid FROM layers ORDER BY last_used DESC LIMIT -1 OFFSET ?)",
                    (self.capacity,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_location(self, source_digest: str, driver_key: str, location: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT locations FROM layers WHERE source_digest=? AND driver_key=?",
                    (source_digest, driver_key),
                ).fetchone()
                if row is not None:
                    locations = sorted({*json.loads(row[0]), location})
                    self._db.execute(
                        "UPDATE layers SET locations=? WHERE source_digest=? AND driver_key=?",
                        (json.dumps(locations), source_digest, driver_key),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def discard(self, source_digest: str, driver_key: str) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM layers WHERE source_digest=? AND driver_key=?", (source_digest, driver_key)
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM layers").fetchone()[0])


CACHE_VERSION: Final = "containerd.io/snapshot/nydus-cache-version"
UNCOMPRESSED: Final = "containerd.io/uncompressed"
_EMPTY_CONFIG: Final = b"{}"


class RemoteCache:
    """Upstream's remote cache image: ``<repository>:<cache_tag>``, shared by every instance.

    An OCI index with one manifest per platform; each manifest has an empty ``{}`` config and lists
    converted layer blobs (already in the repository), newest first, each annotated with the source layer
    digest (``containerd.io/snapshot/nydus-source-digest``) and its diff_id (``containerd.io/uncompressed``).
    Manifests carry ``containerd.io/snapshot/nydus-cache-version``; we also record the driver key so that
    blobs made with other options are never taken.
    """

    def __init__(
        self,
        client: RegistryClient,
        host: str,
        repository: str,
        tag: str,
        version: str,
        driver_key: str,
        capacity: int,
    ) -> None:
        self.client = client
        self.host = host
        self.repository = repository
        self.tag = tag
        self.version = version
        self.driver_key = driver_key
        self.capacity = capacity
        self._lock = threading.Lock()
        self._records: dict[str, Descriptor] | None = None

    def _matches(self, manifest: Manifest) -> bool:
        marks = manifest.annotations
        return marks.get(CACHE_VERSION, "") == self.version and marks.get(DRIVER_KEY) == self.driver_key

    def _index(self) -> Index | None:
        try:
            fetched = self.client.get_manifest(self.host, self.repository, self.tag)
        except NotFoundError:
            return None
        document = parse_manifest(fetched.data, fetched.media_type)
        return document if isinstance(document, Index) else None

    def _manifests(self, index: Index | None) -> list[tuple[Descriptor, Manifest]]:
        out = []
        for entry in index.manifests if index else []:
            data = self.client.get_manifest(self.host, self.repository, entry.digest).data
            manifest = Manifest.from_json(data)
            out.append((entry, manifest))
        return out

    def lookup(self, source_digest: str) -> Descriptor | None:
        """The converted blob recorded for a source layer (loaded once per conversion)."""
        with self._lock:
            if self._records is None:
                self._records = {}
                try:
                    for _, manifest in self._manifests(self._index()):
                        if not self._matches(manifest):
                            continue
                        for layer in manifest.layers:
                            source = layer.annotations.get(keys.NYDUS_SOURCE_DIGEST)
                            if source and UNCOMPRESSED in layer.annotations:
                                self._records.setdefault(source, layer)
                except AccelError as exc:  # the cache is an optimisation: a broken one is ignored
                    log.warning("remote cache %s:%s unreadable: %s", self.repository, self.tag, exc)
            return self._records.get(source_digest)

    def update(self, platform: Platform | None, layers: list[tuple[str, CachedLayer]]) -> None:
        """Put this conversion's layers first in the platform's record list, cut to the capacity, push."""
        fresh = [
            layer.descriptor.with_annotations({keys.NYDUS_SOURCE_DIGEST: source, UNCOMPRESSED: layer.diff_id})
            for source, layer in layers
        ]
        with self._lock:
            index = self._index()
            entries = []
            previous: list[Descriptor] = []
            for entry, manifest in self._manifests(index):
                if _same_platform(entry.platform, platform):
                    if self._matches(manifest):
                        previous = manifest.layers
                    continue
                entries.append(entry)
            seen: set[str] = set()
            records = []
            for record in [*fresh, *previous]:
                source = record.annotations.get(keys.NYDUS_SOURCE_DIGEST, "")
                if source not in seen:
                    seen.add(source)
                    records.append(record)
            config_digest = self.client.push_blob_bytes(self.host, self.repository, _EMPTY_CONFIG)
            manifest = Manifest(
                config=Descriptor(mt.OCI_CONFIG, config_digest, len(_EMPTY_CONFIG)),
                layers=records[: self.capacity],
                media_type=mt.OCI_MANIFEST,
                annotations={CACHE_VERSION: self.version, DRIVER_KEY: self.driver_key},
            )
            data = manifest.to_bytes()
            self.client.put_manifest(
                self.host, self.repository, manifest.descriptor().digest, data, mt.OCI_MANIFEST
            )
            entries.append(manifest.descriptor(platform=platform))
            cache_index = Index(manifests=entries, media_type=mt.OCI_INDEX)
            self.client.put_manifest(
                self.host, self.repository, self.tag, cache_index.to_bytes(), mt.OCI_INDEX
            )


def _same_platform(a: Platform | None, b: Platform | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.normalized() == b.normalized()


class CacheSession:
    """One conversion's use of the caches, for one driver key: lookups verified against where blobs really
    are, what to record once the result is pushed, and where cached blobs can be mounted or pulled from.

    It knows nothing of drivers: entries carry the driver's encoded extra, and a remote record only says
    where to read it from.
    """

    def __init__(
        self,
        local: LayerIndex | None,
        remote: RemoteCache | None,
        store: ContentStore,
        target: ImageRepository,
        client: RegistryClient,
        driver_key: str,
    ) -> None:
        self.local = local
        self.remote = remote
        self.store = store
        self.target = target
        self.client = client
        self.driver_key = driver_key
        self.origins: dict[str, ImageRepository] = {}
        """Blobs that are neither in the store nor in the source, and the repository holding each."""
        self._lock = threading.Lock()
        self._new: list[tuple[str, CachedLayer]] = []
        self._reused: list[str] = []
        self._results: dict[str, CachedLayer] = {}

    @property
    def enabled(self) -> bool:
        return self.local is not None or self.remote is not None

    def lookup(self, layer: Descriptor) -> CachedLayer | RemoteRecord | None:
        """An earlier conversion of ``layer`` whose blob can still be had, or None."""
        return self._local_hit(layer.digest) or self._remote_hit(layer.digest)

    def lookup_image(self, key: str) -> CachedLayer | None:
        """A local entry by key alone (layers made from a whole image), verified."""
        return self._local_hit(key)

    def remember(self, source_digest: str, converted: CachedLayer) -> None:
        """Offer a conversion (recorded by ``record`` once the result is pushed)."""
        with self._lock:
            self._results[source_digest] = converted
            if self.local is not None:
                self._new.append((source_digest, converted))

    def record(self, images: list[tuple[Platform | None, list[str]]]) -> None:
        """After a successful push (``images``: each converted image's platform and source layers): the
        converted blobs now live in the target too."""
        if self.remote is not None:
            for platform, sources in images:
                layers = [(d, self._results[d]) for d in sources if d in self._results]
                try:
                    self.remote.update(platform, layers)
                except AccelError as exc:  # the conversion succeeded; the shared cache is best effort
                    log.warning("remote cache %s not updated: %s", self.remote.tag, exc)
        if self.local is None:
            return
        location = self.target.location
        for source_digest, converted in self._new:
            self.local.put(
                source_digest,
                self.driver_key,
                converted.descriptor,
                converted.diff_id,
                converted.extra,
                [location],
            )
        for source_digest in self._reused:
            self.local.add_location(source_digest, self.driver_key, location)

    def _local_hit(self, source_digest: str) -> CachedLayer | None:
        if self.local is None:
            return None
        entry = self.local.get(source_digest, self.driver_key)
        if entry is None:
            return None
        if not self._locate(entry.descriptor.digest, entry.locations):
            log.info(
                "layer cache: %s of %s vanished, converting again", entry.descriptor.digest, source_digest
            )
            self.local.discard(source_digest, self.driver_key)
            return None
        log.info("layer cache hit: %s -> %s", source_digest, entry.descriptor.digest)
        with self._lock:
            self._reused.append(source_digest)
            self._results[source_digest] = CachedLayer(entry.descriptor, entry.diff_id, entry.extra)
        return self._results[source_digest]

    def _remote_hit(self, source_digest: str) -> RemoteRecord | None:
        remote = self.remote
        if remote is None:
            return None
        record = remote.lookup(source_digest)
        if record is None or not self.target.has_blob(record.digest):
            return None
        own = (UNCOMPRESSED, keys.NYDUS_SOURCE_DIGEST)
        descriptor = record.replace(annotations={k: v for k, v in record.annotations.items() if k not in own})

        def read_at(offset: int, length: int) -> bytes:
            return self.client.read_blob_range(remote.host, remote.repository, record.digest, offset, length)

        log.info("remote cache hit: %s -> %s", source_digest, record.digest)
        return RemoteRecord(descriptor, record.annotations[UNCOMPRESSED], read_at)

    def _locate(self, digest: str, locations: list[str]) -> bool:
        """Whether the blob can be had: in the target, from a place it was seen (a mount costs nothing),
        or, last, in the local store (an upload)."""
        if self.target.has_blob(digest):
            return True
        for location in locations:
            repository = self._repository_at(location)
            if repository is not None and repository.has_blob(digest):
                with self._lock:
                    self.origins[digest] = repository
                return True
        return self.store.has(digest)

    def _repository_at(self, location: str) -> ImageRepository | None:
        # Only places on the target's own registry (mountable, and configured) or local layouts.
        ref = parse_image_ref(location)
        if isinstance(ref, LayoutReference):
            return LayoutRepository(ref) if OCILayout(ref.path).exists() else None
        if isinstance(self.target, RegistryRepository) and ref.host == self.target.host:
            return RegistryRepository(self.client, ref)
        return None
