"""Digests (``algorithm:hex``): parsing, computing incrementally, verifying."""

from __future__ import annotations

import hashlib
import re
from typing import Final

from accel.errors import DigestMismatchError, InvalidReferenceError

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


def verify(data: bytes, expected: str, what: str = "content") -> None:
    """Raise DigestMismatchError unless ``data`` hashes to ``expected``."""
    d = Digester.for_digest(expected)
    d.update(data)
    if d.digest != expected:
        raise DigestMismatchError(f"{what}: digest mismatch: expected {expected}, got {d.digest}")
