"""Digests (``algorithm:hex``): parsing, computing incrementally, verifying."""

from __future__ import annotations

import hashlib
import io
import re
from typing import TYPE_CHECKING, BinaryIO, Final, cast

from accel.errors import DigestMismatchError, InvalidReferenceError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_DIGEST_RE: Final = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


def validate(value: str) -> str:
    """Return ``value`` if it is a well-formed sha256/sha512 digest, else raise InvalidReferenceError."""
    if not is_digest(value):
        raise InvalidReferenceError(f"invalid digest {value!r}")
    return value


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_part(digest: str) -> str:
    return digest.split(":", 1)[1]


class Digester:
    """Incremental digest of a stream, in the algorithm of an expected digest (sha256 by default)."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    @classmethod
    def for_digest(cls, digest: str) -> Digester:
        return cls(validate(digest).split(":", 1)[0])

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def copy(self) -> Digester:
        clone = Digester.__new__(Digester)
        clone.algorithm = self.algorithm
        clone._hash = self._hash.copy()
        clone.size = self.size
        return clone

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"


class ByteCount:
    """A Digester's byte count without the hash, for a stream whose digest is checked elsewhere."""

    def __init__(self) -> None:
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)


def verify(data: bytes, expected: str, what: str = "content") -> None:
    """Raise DigestMismatchError unless ``data`` hashes to ``expected``."""
    d = Digester.for_digest(expected)
    d.update(data)
    if d.digest != expected:
        raise DigestMismatchError(f"{what}: digest mismatch: expected {expected}, got {d.digest}")


class VerifyingReader(io.RawIOBase):
    """A read-only stream over ``raw`` that raises DigestMismatchError when it ends (or runs past
    ``size``) unless what was read hashes to ``expected``. Only sequential reads to EOF are verified."""

    def __init__(self, raw: BinaryIO, expected: str, size: int | None = None, what: str = "blob") -> None:
        super().__init__()
        self._raw = raw
        self._digester = Digester.for_digest(expected)
        self._expected = expected
        self._size = size
        self._what = what
        self.verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        n = len(data)
        view[:n] = data
        if n:
            self._digester.update(view[:n])
            if self._size is not None and self._digester.size > self._size:
                raise DigestMismatchError(f"{self._what}: longer than its expected size {self._size}")
        elif not self.verified:
            self._check()
        return n

    def _check(self) -> None:
        if self._size is not None and self._digester.size != self._size:
            raise DigestMismatchError(
                f"{self._what}: size mismatch: expected {self._size}, got {self._digester.size}"
            )
        if self._digester.digest != self._expected:
            raise DigestMismatchError(
                f"{self._what}: digest mismatch: expected {self._expected}, got {self._digester.digest}"
            )
        self.verified = True

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def verifying_reader(raw: BinaryIO, expected: str, size: int | None = None, what: str = "blob") -> BinaryIO:
    """``raw`` wrapped so that reading it to the end verifies its digest (and size)."""
    return cast(BinaryIO, io.BufferedReader(VerifyingReader(raw, expected, size, what), 1 << 20))
