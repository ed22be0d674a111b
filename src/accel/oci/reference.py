"""Image references: ``[host/]repo[:tag][@digest]`` (Docker grammar) and ``oci:PATH[:TAG]`` layouts.

``Reference.parse`` applies Docker's defaults: ``docker.io`` when there is no host, ``library/`` for a
single-component Docker Hub name, ``latest`` when there is neither tag nor digest. ``str()`` gives the
canonical, fully-qualified form, which ``parse`` maps back to an equal ``Reference``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from accel.errors import InvalidReferenceError
from accel.oci import digest as _digest

DEFAULT_HOST: Final = "docker.io"
DEFAULT_TAG: Final = "latest"
_LEGACY_HOSTS: Final = frozenset({"index.docker.io", "registry-1.docker.io"})

_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE: Final = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HOST_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE: Final = re.compile(
    rf"^(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG_RE: Final = re.compile(r"^[\w][\w.-]{0,127}$")
# The OCI image layout's ref.name grammar (image-spec annotations.md), looser than a Docker tag.
_LAYOUT_TAG_RE: Final = re.compile(r"^[A-Za-z0-9]+(?:[._:@/+-]+[A-Za-z0-9]+)*$")
_MAX_NAME: Final = 255
_HEX64_RE: Final = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A registry image reference; ``tag`` and ``digest`` may both be set (the digest wins)."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if not _HOST_RE.match(self.host):
            raise InvalidReferenceError(f"invalid registry host {self.host!r}")
        if not _REPO_RE.match(self.repository):
            raise InvalidReferenceError(f"invalid repository name {self.repository!r}")
        if len(self.name) > _MAX_NAME:
            raise InvalidReferenceError(f"image name {self.name!r} is longer than {_MAX_NAME} characters")
        if self.tag is not None and not _TAG_RE.match(self.tag):
            raise InvalidReferenceError(f"invalid tag {self.tag!r}")
        if self.digest is not None and not _digest.is_digest(self.digest):
            raise InvalidReferenceError(f"invalid digest {self.digest!r}")

    @classmethod
    def parse(cls, value: str) -> Reference:
        """Parse ``[host/]repo[:tag][@digest]`` (an optional ``docker://`` prefix is accepted)."""
        text = value.strip()
        text = text.removeprefix("docker://")
        if not text:
            raise InvalidReferenceError("empty image reference")
        if any(c.isspace() for c in text):
            raise InvalidReferenceError(f"invalid reference {value!r}: contains whitespace")
        name, at, digest = text.partition("@")
        if at and not _digest.is_digest(digest):
            raise InvalidReferenceError(f"invalid reference {value!r}: invalid digest {digest!r}")
        tag: str | None = None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise InvalidReferenceError(f"invalid reference {value!r}: invalid tag {tag!r}")
        host, repository = _split_host(name)
        if not repository:
            raise InvalidReferenceError(f"invalid reference {value!r}: no repository")
        if repository != repository.lower():
            raise InvalidReferenceError(f"invalid reference {value!r}: repository name must be lowercase")
        if not _REPO_RE.match(repository):
            raise InvalidReferenceError(
                f"invalid reference {value!r}: invalid repository name {repository!r}"
            )
        if _HEX64_RE.match(repository):
            # Docker refuses these: they would be confused with image IDs.
            raise InvalidReferenceError(
                f"invalid reference {value!r}: repository name is a 64-character hex id"
            )
        if not _HOST_RE.match(host):
            raise InvalidReferenceError(f"invalid reference {value!r}: invalid registry host {host!r}")
        if host in _LEGACY_HOSTS:
            host = DEFAULT_HOST
        if host == DEFAULT_HOST and "/" not in repository:
            repository = f"library/{repository}"
        if tag is None and not at:
            tag = DEFAULT_TAG
        return cls(host, repository, tag, digest if at else None)

    @property
    def name(self) -> str:
        """``host/repository``."""
        return f"{self.host}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/`` in a registry URL: the digest if present, else the tag."""
        ref = self.digest or self.tag
        if ref is None:
            raise InvalidReferenceError(f"{self.name} has neither tag nor digest")
        return ref

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest."""
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (the tag is kept for display)."""
        return replace(self, digest=digest)

    def repo_ref(self) -> Reference:
        """The repository alone (neither tag nor digest)."""
        return replace(self, tag=None, digest=None)

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


@dataclass(frozen=True)
class LayoutReference:
    """An OCI image layout directory, ``oci:PATH[:TAG]``; ``tag`` is the ``ref.name`` annotation."""

    path: Path
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.tag is not None and not _LAYOUT_TAG_RE.match(self.tag):
            raise InvalidReferenceError(f"invalid OCI layout tag {self.tag!r}")

    @classmethod
    def parse(cls, value: str) -> LayoutReference:
        """Parse ``oci:PATH[:TAG]``; like skopeo, the path ends at its first ``:``."""
        if not value.startswith("oci:"):
            raise InvalidReferenceError(f"invalid OCI layout reference {value!r}: expected oci:PATH[:TAG]")
        path, _, tag = value[4:].partition(":")
        if not path:
            raise InvalidReferenceError(f"invalid OCI layout reference {value!r}: empty path")
        return cls(Path(path), tag or None)

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


def parse_image_ref(value: str) -> Reference | LayoutReference:
    """A registry reference, or a layout reference when ``value`` starts with ``oci:``."""
    if value.startswith("oci:"):
        return LayoutReference.parse(value)
    return Reference.parse(value)


def _split_host(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    # Docker's rule: the first component is a host if it looks like one ('.' or ':', localhost), and
    # also if it has uppercase letters, which a repository name cannot have.
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, rest
    return DEFAULT_HOST, name
