"""The file tree an image's layers add up to, as a container sees it: the model `accelctl check` compares.

A ``FileTree`` applies layer tars in order with the OCI whiteout rules (``.wh.NAME`` deletes ``NAME`` of
the layers below, ``.wh..wh..opq`` empties its directory of what the layers below put there) and keeps,
per path, what every lazy-pulling format must preserve: type, mode, owner, size, content digest, link
target, device numbers and xattrs. Times are left out on purpose: eStargz and Nydus keep them, but
comparing them would only flag the source's own precision (PAX vs USTAR) as a difference.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from accel.errors import FormatError
from accel.formats.streams import ByteSource
from accel.formats.tar import TarEntry, TarReader, check_safe, clean_path

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"

_TYPES = {
    b"0": "reg",
    b"7": "reg",
    b"S": "reg",
    b"5": "dir",
    b"2": "symlink",
    b"3": "chr",
    b"4": "blk",
    b"6": "fifo",
}
_READ = 1 << 20
_PAX_XATTR = "SCHILY.xattr."


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One path of a merged tree (a hard link is recorded as the file it links to)."""

    type: str
    mode: int
    uid: int
    gid: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def describe(self) -> str:
        parts = [self.type, f"{self.mode:04o}", f"{self.uid}:{self.gid}"]
        if self.type == "reg":
            parts += [f"{self.size} bytes", f"sha256:{self.sha256}"]
        if self.target is not None:
            parts.append(f"-> {self.target}")
        if self.rdev is not None:
            parts.append(f"dev {self.rdev[0]},{self.rdev[1]}")
        if self.xattrs:
            parts.append("xattrs " + ",".join(name for name, _ in self.xattrs))
        return " ".join(parts)


def _implicit_dir() -> FileRecord:
    # What containerd and the Nydus builder both create for a parent no entry names.
    return FileRecord("dir", 0o755, 0, 0)


@dataclass
class FileTree:
    """Paths (``/``-rooted, ``/`` itself included) to records; ``apply`` adds one layer on top."""

    files: dict[str, FileRecord] = field(default_factory=lambda: {"/": _implicit_dir()})

    def apply(self, tar: ByteSource, *, skip: Callable[[str], bool] | None = None) -> None:
        """Apply one uncompressed layer tar; ``skip(path)`` drops entries a format adds (an eStargz TOC)."""
        added: set[str] = set()
        reader = TarReader(tar)
        for entry in reader:
            check_safe(entry.name)
            path = "/" + clean_path(entry.name)
            if skip is not None and skip(path):
                continue
            parent, _, base = path.rpartition("/")
            parent = parent or "/"
            if base == OPAQUE_WHITEOUT:
                self._remove_below(parent, keep=added)
                continue
            if base.startswith(WHITEOUT_PREFIX):
                self._remove(f"{parent.rstrip('/')}/{base[len(WHITEOUT_PREFIX) :]}")
                continue
            record = self._record(entry, reader)
            self._ensure_parents(path)
            old = self.files.get(path)
            if old is not None and not (old.type == "dir" and record.type == "dir"):
                self._remove(path)
            self.files[path] = record
            added.add(path)

    def _record(self, entry: TarEntry, reader: TarReader) -> FileRecord:
        if entry.type == b"1":
            linked = self.files.get("/" + clean_path(entry.linkname))
            if linked is None or linked.type != "reg":
                raise FormatError(f"hard link to {entry.linkname!r}, which is not a file", entry=entry.name)
            return linked
        kind = _TYPES.get(entry.type)
        if kind is None:
            raise FormatError(f"tar entry type {entry.type!r} has no place in a file tree", entry=entry.name)
        found = dict(entry.xattrs)
        for key, value in entry.pax_records.items():
            # Go's reader drops an xattr whose PAX value is empty; the Nydus builder (as nydus-image) and
            # a kernel extracting with tar(1) keep it, so the layer's own declaration is what counts.
            if key.startswith(_PAX_XATTR) and not value:
                found.setdefault(key[len(_PAX_XATTR) :], b"")
        xattrs = tuple(sorted(found.items()))
        record = FileRecord(kind, stat.S_IMODE(entry.mode), entry.uid, entry.gid, xattrs=xattrs)
        if kind == "reg":
            digest = hashlib.sha256()
            size = 0
            while chunk := reader.read(_READ):
                digest.update(chunk)
                size += len(chunk)
            return replace(record, size=size, sha256=digest.hexdigest())
        if kind == "symlink":
            return replace(record, target=entry.linkname)
        if kind in ("chr", "blk"):
            return replace(record, rdev=(entry.devmajor, entry.devminor))
        return record

    def _ensure_parents(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.files.setdefault("/" + "/".join(parts[:i]), _implicit_dir())

    def _remove(self, path: str) -> None:
        self.files.pop(path, None)
        self._remove_below(path, keep=set())

    def _remove_below(self, directory: str, *, keep: set[str]) -> None:
        prefix = directory.rstrip("/") + "/"
        for path in [p for p in self.files if p.startswith(prefix) and p not in keep]:
            del self.files[path]


@dataclass(frozen=True, slots=True)
class Difference:
    """The first way two trees differ at one path (``None`` on a side: the path is missing there)."""

    path: str
    expected: FileRecord | None
    found: FileRecord | None

    def describe(self) -> str:
        if self.found is None:
            return f"{self.path}: missing (expected {self.expected.describe() if self.expected else '?'})"
        if self.expected is None:
            return f"{self.path}: unexpected ({self.found.describe()})"
        fields = [
            name for name in FileRecord.__slots__ if getattr(self.expected, name) != getattr(self.found, name)
        ]
        return (
            f"{self.path}: {', '.join(fields)} differ "
            f"(expected {self.expected.describe()}, found {self.found.describe()})"
        )


def differences(expected: Mapping[str, FileRecord], found: Mapping[str, FileRecord]) -> Iterator[Difference]:
    """Every path where ``found`` differs from ``expected``, in path order."""
    for path in sorted(expected.keys() | found.keys(), key=lambda p: p.encode("utf-8", "surrogateescape")):
        want, got = expected.get(path), found.get(path)
        if want != got:
            yield Difference(path, want, got)
