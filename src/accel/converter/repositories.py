"""Where images live: a repository on a registry, or an OCI image layout directory.

The pipeline reads sources and writes targets through this one small interface, so a conversion works
the same from registry to registry, from a layout to a registry, or with no registry at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from accel.content import BlobWriter
from accel.errors import ConversionError, DigestMismatchError, NotFoundError
from accel.oci import digest as digests
from accel.oci.layout import OCILayout
from accel.oci.manifest import Descriptor
from accel.oci.reference import LayoutReference, Reference
from accel.registry import BlobUpload, RegistryClient

Progress = Callable[[int], None]


class ImageRepository(ABC):
    """A place that holds manifests (by tag or digest) and blobs (by digest)."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where this repository is, as the layer cache records it (``host/repo`` or ``oci:/abs/path``)."""

    @abstractmethod
    def describe(self, reference: str | None = None) -> str:
        """A human-readable name, with ``reference`` appended (``host/repo:tag``, ``oci:path:tag``)."""

    @abstractmethod
    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """``(data, media_type, digest)`` of a manifest or index, verified against its digest."""

    @abstractmethod
    def find_manifest(self, reference: str) -> str | None:
        """The digest ``reference`` points at, or None when it does not exist."""

    @abstractmethod
    def put_manifest(self, data: bytes, media_type: str, reference: str) -> None:
        """Store a manifest under a tag or under its digest."""

    @abstractmethod
    def has_blob(self, digest: str) -> bool: ...

    @abstractmethod
    def read_blob(self, digest: str) -> bytes:
        """A small blob (a config), verified."""

    @abstractmethod
    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes of a blob from ``offset``, unverified (a lazy reader checks them against the
        digests its format records)."""

    @abstractmethod
    def fetch_blob(self, descriptor: Descriptor, sink: BlobWriter, progress: Progress | None) -> None:
        """Stream a blob into ``sink``, verified against the descriptor: by ``sink`` itself when it
        expects the descriptor's digest (a store writer checks it on commit), so the bytes are hashed once."""

    @abstractmethod
    def push_blob(
        self,
        descriptor: Descriptor,
        open_source: Callable[[], BinaryIO],
        source: ImageRepository | None,
        progress: Progress | None,
        verified: Path | None = None,
    ) -> str:
        """Make a blob present: ``"exists"``, ``"mounted"`` (from ``source``), ``"linked"`` (from
        ``verified``, a content-store file holding the blob) or ``"uploaded"``. ``progress`` counts the
        bytes copied or sent, so only an upload reports any."""

    def referrers_fallback(self, subject: str, descriptor: Descriptor) -> None:  # noqa: B027 - optional
        """Record ``descriptor`` as a referrer of ``subject`` where the store has no referrers API."""

    def open_local(self, digest: str) -> BinaryIO | None:
        """The blob as a local file when this repository is on disk (no copy needed), else None."""
        return None


class RegistryRepository(ImageRepository):
    def __init__(self, client: RegistryClient, reference: Reference) -> None:
        self.client = client
        self.host = reference.host
        self.repository = reference.repository

    @property
    def location(self) -> str:
        return f"{self.host}/{self.repository}"

    def describe(self, reference: str | None = None) -> str:
        name = f"{self.host}/{self.repository}"
        if reference is None:
            return name
        return f"{name}{'@' if digests.is_digest(reference) else ':'}{reference}"

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        fetched = self.client.get_manifest(self.host, self.repository, reference)
        return fetched.data, fetched.media_type, fetched.digest

    def find_manifest(self, reference: str) -> str | None:
        found = self.client.head_manifest(self.host, self.repository, reference)
        return found.digest if found else None

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> None:
        self.client.put_manifest(self.host, self.repository, reference, data, media_type)

    def has_blob(self, digest: str) -> bool:
        return self.client.blob_exists(self.host, self.repository, digest)

    def read_blob(self, digest: str) -> bytes:
        return self.client.get_blob(self.host, self.repository, digest)

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        return self.client.read_blob_range(self.host, self.repository, digest, offset, length)

    def fetch_blob(self, descriptor: Descriptor, sink: BlobWriter, progress: Progress | None) -> None:
        self.client.pull_blob(
            self.host,
            self.repository,
            descriptor.digest,
            descriptor.size,
            cast(BinaryIO, sink),  # the client only writes, and rewinds with seek/truncate
            progress,
            sink_verifies=sink.expected_digest == descriptor.digest,
        )

    def push_blob(
        self,
        descriptor: Descriptor,
        open_source: Callable[[], BinaryIO],
        source: ImageRepository | None,
        progress: Progress | None,
        verified: Path | None = None,
    ) -> str:
        mount_from = (
            source.repository if isinstance(source, RegistryRepository) and source.host == self.host else None
        )
        return self.client.push_blob(
            self.host,
            self.repository,
            descriptor.digest,
            descriptor.size,
            open_source,
            mount_from=mount_from,
            progress=progress,
        )

    def start_upload(self) -> BlobUpload:
        """An upload session for a blob still being written (its digest is given at the end)."""
        return self.client.start_upload(self.host, self.repository)

    def referrers_fallback(self, subject: str, descriptor: Descriptor) -> None:
        # Registries with the referrers API index the subject themselves; Debian's 2.8 has none.
        index = self.client.referrers(self.host, self.repository, subject)
        if any(m.get("digest") == descriptor.digest for m in index.get("manifests", [])):
            return
        self.client.add_referrer_to_fallback_tag(self.host, self.repository, subject, descriptor.to_dict())


class LayoutRepository(ImageRepository):
    def __init__(self, reference: LayoutReference, *, create: bool = False) -> None:
        self.layout = OCILayout(reference.path)
        if create and not self.layout.exists():
            self.layout.init()
        elif not self.layout.exists():
            raise NotFoundError(f"{reference.path} is not an OCI image layout (no oci-layout file)")

    @property
    def location(self) -> str:
        return f"oci:{self.layout.path.resolve()}"

    def describe(self, reference: str | None = None) -> str:
        path = f"oci:{self.layout.path}"
        return (
            path if reference is None else f"{path}{'@' if digests.is_digest(reference) else ':'}{reference}"
        )

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        if digests.is_digest(reference):
            data = self.layout.read_blob(reference)
            media_type = _media_type_of(data)
            return data, media_type, reference
        descriptor = self.layout.resolve(reference or None)
        return self.layout.read_blob(descriptor.digest), descriptor.media_type, descriptor.digest

    def find_manifest(self, reference: str) -> str | None:
        if digests.is_digest(reference):
            return reference if self.layout.has_blob(reference) else None
        try:
            return self.layout.resolve(reference or None).digest
        except NotFoundError:
            return None

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> None:
        digest = self.layout.write_blob(data)
        if not digests.is_digest(reference):
            self.layout.tag(Descriptor(media_type=media_type, digest=digest, size=len(data)), reference)

    def has_blob(self, digest: str) -> bool:
        return self.layout.has_blob(digest)

    def read_blob(self, digest: str) -> bytes:
        return self.layout.read_blob(digest)

    def open_local(self, digest: str) -> BinaryIO | None:
        return self.layout.open_blob(digest) if self.layout.has_blob(digest) else None

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        with self.layout.open_blob(digest) as blob:
            blob.seek(offset)
            data = blob.read(length)
        if len(data) != length:
            raise ConversionError(f"{self.describe()}: blob {digest} has no bytes {offset}+{length}")
        return data

    def fetch_blob(self, descriptor: Descriptor, sink: BlobWriter, progress: Progress | None) -> None:
        # A writer expecting this digest checks it on commit; hashing here too would do it twice.
        digester = (
            None
            if sink.expected_digest == descriptor.digest
            else digests.Digester.for_digest(descriptor.digest)
        )
        with self.layout.open_blob(descriptor.digest) as blob:
            while chunk := blob.read(1 << 20):
                if digester is not None:
                    digester.update(chunk)
                sink.write(chunk)
                if progress:
                    progress(len(chunk))
        if digester is not None and digester.digest != descriptor.digest:
            raise DigestMismatchError(
                f"{self.describe(descriptor.digest)}: digest mismatch: got {digester.digest}"
            )

    def push_blob(
        self,
        descriptor: Descriptor,
        open_source: Callable[[], BinaryIO],
        source: ImageRepository | None,
        progress: Progress | None,
        verified: Path | None = None,
    ) -> str:
        if self.layout.has_blob(descriptor.digest):
            return "exists"
        # A file of the content store was verified when it was written: link it instead of copying.
        if verified is not None and self.layout.link_blob(verified, descriptor.digest):
            return "linked"  # no bytes moved: the caller reports the blob as linked
        with open_source() as stream:
            self.layout.ingest(stream, descriptor.digest)
        if progress:
            progress(descriptor.size)
        return "uploaded"


def _media_type_of(data: bytes) -> str:
    from accel.oci.manifest import parse_manifest

    document = parse_manifest(data)
    return document.media_type or ""


def open_repository(
    reference: Reference | LayoutReference, client: RegistryClient, *, create: bool = False
) -> ImageRepository:
    if isinstance(reference, LayoutReference):
        return LayoutRepository(reference, create=create)
    return RegistryRepository(client, reference)
