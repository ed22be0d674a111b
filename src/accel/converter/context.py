"""The I/O a driver works through (``DriverContext``), as one conversion provides it.

Source layers are pulled lazily, only when a driver reads them, into the content store under the
conversion's lease, so garbage collection never removes what a running conversion uses. Blobs that the
layer cache located elsewhere (``origins``) are pulled from there. A driver reads a layer while it is
being pulled (a ``GrowingFile`` of the blob being written): decompressing and converting overlap the
download, and the layer's end is only reached once its digest verified.

Images other than the source that a driver opens (``open_image``: a Nydus chunk dictionary) are resolved
once per conversion through the converter's repositories, so only configured registries are contacted;
their blobs are then pulled or mounted from where they live when a converted manifest lists them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from accel.content import BlobWriter, ContentStore, GrowingFile, Lease
from accel.converter.progress import Counters
from accel.converter.repositories import ImageRepository
from accel.converter.uploads import StreamedUploads
from accel.drivers.base import ReadAt
from accel.errors import CanceledError, ConversionError
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, Index, Manifest, parse_manifest

RepositoryOpener = Callable[[str], tuple[ImageRepository, str]]
"""An image reference -> its repository and the tag or digest in it (the converter's ``open_repository``)."""


def _feeding(reader: GrowingFile) -> Callable[[int], None]:
    def written(size: int) -> None:
        if reader.abandoned:
            raise CanceledError("the layer's reader stopped")
        reader.advance_to(size)

    return written


@dataclass(frozen=True)
class _OpenedImage:
    """``OpenedImage``: an image resolved in its repository."""

    reference: str
    manifests: Sequence[tuple[Descriptor, Manifest]]
    repository: ImageRepository

    def read_at(self, blob: Descriptor) -> ReadAt:
        def read(offset: int, length: int) -> bytes:
            return self.repository.read_range(blob.digest, offset, length)

        return read


class OtherImages:
    """The images other than the source that one conversion's driver opens, each resolved once (its tag
    could move during the conversion); their blobs' repositories are where those blobs come from."""

    def __init__(self, opener: RepositoryOpener | None) -> None:
        self._opener = opener
        self._images: dict[str, _OpenedImage] = {}
        self._origins: dict[str, ImageRepository] = {}
        self._lock = threading.Lock()

    def open(self, reference: str) -> _OpenedImage:
        with self._lock:
            found = self._images.get(reference)
            if found is None:
                found = self._images[reference] = self._resolve(reference)
                for _, manifest in found.manifests:
                    for blob in [manifest.config, *manifest.layers]:
                        self._origins.setdefault(blob.digest, found.repository)
            return found

    def _resolve(self, reference: str) -> _OpenedImage:
        if self._opener is None:
            raise ConversionError(f"{reference}: no other image can be opened here")
        repository, name = self._opener(reference)
        data, media_type, digest = repository.get_manifest(name)
        document = parse_manifest(data, media_type)
        manifests: list[tuple[Descriptor, Manifest]] = []
        if isinstance(document, Index):
            for entry in document.manifests:
                if entry.media_type in mt.MANIFESTS:
                    child, child_type, _ = repository.get_manifest(entry.digest)
                    manifests.append((entry, Manifest.from_json(child, child_type)))
        else:
            manifests.append((Descriptor.of(data, media_type), document))
        return _OpenedImage(repository.describe(digest), tuple(manifests), repository)

    def origin(self, digest: str) -> ImageRepository | None:
        with self._lock:
            return self._origins.get(digest)


class ConversionIO:
    """One conversion's blobs: pulls into the store, new blobs, cancellation, progress and notes.

    ``for_layer`` gives a view with notes of its own, so that notes of layers converted in parallel are
    reported in layer order.
    """

    def __init__(
        self,
        store: ContentStore,
        lease: Lease,
        source: ImageRepository,
        origins: Mapping[str, ImageRepository],
        counters: Counters,
        cancel: threading.Event | None,
        scratch: Path,
        images: OtherImages | None = None,
        uploads: StreamedUploads | None = None,
    ) -> None:
        """``uploads``: where new blobs are streamed to while they are written (a registry target)."""
        self.store = store
        self.lease = lease
        self.source = source
        self.origins = origins
        self.counters = counters
        self.cancel = cancel
        self._scratch = scratch
        self.images = images or OtherImages(None)
        self.uploads = uploads
        self.notes: list[str] = []
        self._notes_lock = threading.Lock()

    def for_layer(self) -> ConversionIO:
        return ConversionIO(
            self.store,
            self.lease,
            self.source,
            self.origins,
            self.counters,
            self.cancel,
            self._scratch,
            self.images,
            self.uploads,
        )

    # ------------------------------------------------------------------ DriverContext

    def open_layer(self, layer: Descriptor) -> BinaryIO:
        self.lease.add(layer.digest)
        if not self.store.has(layer.digest):
            self.check_canceled()
            streaming = self._pull_in_background(layer)
            if streaming is not None:
                return cast(BinaryIO, streaming)
        return self.store.open(layer.digest)

    def _pull_in_background(self, layer: Descriptor) -> GrowingFile | None:
        """Start pulling ``layer`` in a thread of its own and return a reader of the bytes as they come;
        None when the blob turned out to be in the store (another pull, maybe of another process, holds
        the digest's fetch lock until it has committed)."""
        started: queue.SimpleQueue[GrowingFile | BaseException | None] = queue.SimpleQueue()

        def pull() -> None:
            reader: GrowingFile | None = None
            try:
                with self.store.fetch_lock(layer.digest):
                    if self.store.has(layer.digest):
                        started.put(None)
                        return
                    begin = time.monotonic()
                    counter = self.counters.blob("pull", layer)
                    with self.store.writer(layer.digest, layer.size, lease=self.lease) as sink:
                        reader = GrowingFile(sink.open_reader(), layer.size)
                        sink.watch(_feeding(reader))
                        started.put(reader)
                        self.origin(layer.digest).fetch_blob(layer, sink, counter.advance)
                        sink.commit()
                    counter.done("pulled")
                    self.counters.span("pull", begin, time.monotonic())
                reader.finish()
            except BaseException as exc:  # the reader raises it; nothing else waits for this thread
                if reader is None:
                    started.put(exc)
                else:
                    reader.finish(exc)

        threading.Thread(target=pull, name=f"pull-{layer.digest[7:19]}", daemon=True).start()
        first = started.get()
        if isinstance(first, BaseException):
            raise first
        return first

    def new_blob(self) -> BlobWriter:
        writer = self.store.writer(lease=self.lease)
        if self.uploads is not None:
            self.uploads.attach(writer)
        return writer

    def put_blob(self, data: bytes) -> str:
        return self.store.write_bytes(data, lease=self.lease)

    def read_blob(self, digest: str) -> bytes:
        if self.store.has(digest):
            return self.store.read_bytes(digest)
        data = self.origin(digest).read_blob(digest)
        self.store.write_bytes(data, digest, lease=self.lease)
        return data

    def check_canceled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CanceledError("conversion canceled")

    def open_image(self, reference: str) -> _OpenedImage:
        return self.images.open(reference)

    def advance(self, nbytes: int) -> None:
        self.counters.advance("convert", nbytes)

    def note(self, message: str) -> None:
        with self._notes_lock:
            self.notes.append(message)

    @property
    def scratch_dir(self) -> str:
        self._scratch.mkdir(parents=True, exist_ok=True)
        return str(self._scratch)

    # ------------------------------------------------------------------ pulling

    def origin(self, digest: str) -> ImageRepository:
        """Where a blob that is not in the store comes from."""
        return self.origins.get(digest) or self.images.origin(digest) or self.source

    def ensure_local(self, blob: Descriptor) -> None:
        """Make ``blob`` present in the content store (and leased), pulling it if needed."""
        self.lease.add(blob.digest)
        if self.store.has(blob.digest):
            return
        with self.store.fetch_lock(blob.digest):
            if self.store.has(blob.digest):
                return
            self.check_canceled()
            started = time.monotonic()
            counter = self.counters.blob("pull", blob)
            with self.store.writer(blob.digest, blob.size, lease=self.lease) as sink:
                self.origin(blob.digest).fetch_blob(blob, sink, counter.advance)
                sink.commit()
            counter.done("pulled")
            self.counters.span("pull", started, time.monotonic())
