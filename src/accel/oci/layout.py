"""OCI image layout directories (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``), read and written.

Blobs are written atomically (temporary file in the layout, fsync, rename) and verified against the
expected digest and size; ``index.json`` is rewritten atomically under an exclusive lock on the directory, so
two writers tagging into the same layout do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from accel.errors import ContentError, DigestMismatchError, InvalidReferenceError, NotFoundError
from accel.oci import digest as _digest
from accel.oci.manifest import Descriptor, Index, Manifest, encode_json, parse_manifest

REF_NAME: Final = "org.opencontainers.image.ref.name"
LAYOUT_VERSION: Final = "1.0.0"
_CHUNK: Final = 1 << 20


class OCILayout:
    """One OCI image layout directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OCILayout({str(self.path)!r})"

    def exists(self) -> bool:
        return (self.path / "oci-layout").is_file()

    def init(self) -> OCILayout:
        """Create the directory, ``oci-layout`` and an empty ``index.json`` (existing ones are kept)."""
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (self.path / "oci-layout").exists():
            _atomic_write(self.path / "oci-layout", encode_json({"imageLayoutVersion": LAYOUT_VERSION}))
        if not (self.path / "index.json").exists():
            _atomic_write(self.path / "index.json", Index(manifests=[]).to_json())
        return self

    # --- index.json -------------------------------------------------------------------------------------

    def index(self) -> Index:
        try:
            data = (self.path / "index.json").read_bytes()
        except FileNotFoundError:
            raise ContentError(f"{self.path} is not an OCI image layout (no index.json)") from None
        except OSError as exc:
            raise ContentError(f"cannot read {self.path / 'index.json'}: {exc.strerror}") from None
        return Index.from_json(data)

    def tags(self) -> list[str]:
        return [d.annotations[REF_NAME] for d in self.index().manifests if REF_NAME in d.annotations]

    def resolve(self, tag: str | None = None) -> Descriptor:
        """The index.json entry named ``tag``; without a tag, the only entry (error if there are several)."""
        manifests = self.index().manifests
        if tag is None:
            if len(manifests) == 1:
                return manifests[0]
            if not manifests:
                raise NotFoundError(f"OCI layout {self.path} holds no image")
            raise InvalidReferenceError(
                f"OCI layout {self.path} holds {len(manifests)} images; name one with oci:{self.path}:TAG"
            )
        for desc in manifests:
            if desc.annotations.get(REF_NAME) == tag:
                return desc
        raise NotFoundError(f"tag {tag!r} not found in OCI layout {self.path}")

    def tag(self, descriptor: Descriptor, tag: str) -> None:
        """Point ``tag`` at ``descriptor`` in index.json (replacing an entry with the same tag)."""
        entry = descriptor.with_annotations({REF_NAME: tag})
        with self._index_lock():
            index = self.index()
            index.manifests = [d for d in index.manifests if d.annotations.get(REF_NAME) != tag]
            index.manifests.append(entry)
            _atomic_write(self.path / "index.json", index.to_json())

    def add_untagged(self, descriptor: Descriptor) -> None:
        """Append ``descriptor`` to index.json without a name (unless that digest is listed already)."""
        with self._index_lock():
            index = self.index()
            if all(d.digest != descriptor.digest for d in index.manifests):
                index.manifests.append(descriptor)
                _atomic_write(self.path / "index.json", index.to_json())

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- blobs ------------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = _digest.validate(digest).split(":", 1)
        return self.path / "blobs" / algorithm / hex_digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str, verify: bool = False) -> BinaryIO:
        """Open a blob; with ``verify``, reading it to the end raises DigestMismatchError if it is corrupt."""
        try:
            f = self.blob_path(digest).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} not found in OCI layout {self.path}") from None
        return _digest.verifying_reader(f, digest, what=f"blob {digest} in {self.path}") if verify else f

    def read_blob(self, digest: str, verify: bool = True) -> bytes:
        with self.open_blob(digest) as f:
            data = f.read()
        if verify:
            _digest.verify(data, digest, f"blob in {self.path}")
        return data

    def ingest(
        self, stream: BinaryIO, expected_digest: str | None = None, expected_size: int | None = None
    ) -> tuple[str, int]:
        """Copy ``stream`` into a blob atomically and return ``(digest, size)``; verified when expected."""
        digester = _digest.Digester.for_digest(expected_digest) if expected_digest else _digest.Digester()
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".ingest-", dir=self.path)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    digester.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected_size is not None and digester.size != expected_size:
                raise DigestMismatchError(
                    f"blob size mismatch: expected {expected_size}, got {digester.size}"
                )
            if expected_digest is not None and digester.digest != expected_digest:
                raise DigestMismatchError(
                    f"blob digest mismatch: expected {expected_digest}, got {digester.digest}"
                )
            dest = self.blob_path(digester.digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digester.digest, digester.size

    def link_blob(self, verified_file: Path, digest: str) -> bool:
        """Add a blob as a hard link to a file whose content is already verified to be ``digest`` (the
        content store's); False when linking is impossible (another filesystem), so the caller copies."""
        dest = self.blob_path(digest)
        if dest.exists():
            return True
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".link-{os.getpid()}-{dest.name}")
        try:
            os.link(verified_file, tmp)
        except OSError:
            return False
        os.replace(tmp, dest)
        return True

    def write_blob(self, data: bytes, expected_digest: str | None = None) -> str:
        digest = _digest.of_bytes(data) if expected_digest is None else expected_digest
        if expected_digest is not None:
            _digest.verify(data, expected_digest, "blob")
        if not self.has_blob(digest):
            self.path.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.blob_path(digest), data)
        return digest

    def write_document(self, document: Manifest | Index) -> Descriptor:
        """Store a manifest or index (its ``to_bytes()``) and return its descriptor (not tagged)."""
        desc = document.descriptor()
        self.write_blob(document.to_bytes(), desc.digest)
        return desc

    def read_document(self, descriptor: Descriptor) -> Manifest | Index:
        """Read and parse the manifest or index ``descriptor`` points at (verified)."""
        return parse_manifest(self.read_blob(descriptor.digest), descriptor.media_type)

    def read_json(self, digest: str) -> object:
        return json.loads(self.read_blob(digest))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
