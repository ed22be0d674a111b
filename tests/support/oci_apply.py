"""A small reference implementation of OCI layer application (whiteouts, opaque dirs) over tar files.

It uses Python's ``tarfile`` (independent of ``accel.formats.tar``) and builds an in-memory model, so
tests can compare a merged filesystem with what the OCI image spec says the rootfs must be.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Any

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"


@dataclass
class Entry:
    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)


_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "chr",
    tarfile.BLKTYPE: "blk",
    tarfile.FIFOTYPE: "fifo",
}


def _norm(name: str) -> str:
    path = posixpath.normpath("/" + name)
    return "/" if path in ("/", "//") else path


def _remove_tree(fs: dict[str, Entry], path: str) -> None:
    fs.pop(path, None)
    prefix = path.rstrip("/") + "/"
    for p in [p for p in fs if p.startswith(prefix)]:
        del fs[p]


def apply_layer(fs: dict[str, Entry], layer: bytes, *, whiteouts: bool = True) -> None:
    """Apply one uncompressed layer tar to ``fs`` (path -> Entry, root is ``/``)."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tf:
        members = tf.getmembers()
        contents: dict[str, Entry] = {}
        if whiteouts:
            for m in members:
                path = _norm(m.name)
                base = posixpath.basename(path)
                parent = posixpath.dirname(path)
                if base == WH_OPAQUE:
                    prefix = parent.rstrip("/") + "/"
                    for p in [p for p in fs if p.startswith(prefix)]:
                        del fs[p]
                elif base.startswith(WH_PREFIX):
                    _remove_tree(fs, posixpath.join(parent, base[len(WH_PREFIX) :]))
        for m in members:
            path = _norm(m.name)
            base = posixpath.basename(path)
            if whiteouts and base.startswith(WH_PREFIX):
                continue
            xattrs = {
                k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                for k, v in m.pax_headers.items()
                if k.startswith("SCHILY.xattr.")
            }
            if m.islnk():
                src = contents[_norm(m.linkname)]
                entry = Entry(**{**src.__dict__, "xattrs": dict(src.xattrs)})
            else:
                kind = _TYPES[m.type]
                entry = Entry(kind, stat.S_IMODE(m.mode), m.uid, m.gid, int(m.mtime), xattrs=xattrs)
                if kind == "reg":
                    f = tf.extractfile(m)
                    assert f is not None
                    data = f.read()
                    entry.size = len(data)
                    entry.sha256 = hashlib.sha256(data).hexdigest()
                elif kind == "symlink":
                    entry.target = m.linkname
                elif kind in ("chr", "blk"):
                    entry.rdev = (m.devmajor, m.devminor)
            contents[path] = entry
            old = fs.get(path)
            if old is not None and not (old.type == "dir" and entry.type == "dir"):
                _remove_tree(fs, path)
            fs[path] = entry


def apply_layers(layers: list[bytes]) -> dict[str, Entry]:
    fs: dict[str, Entry] = {"/": Entry("dir", 0o755, 0, 0, 0)}
    for i, layer in enumerate(layers):
        apply_layer(fs, layer, whiteouts=i > 0)
    return fs


def as_tree(fs: dict[str, Entry]) -> list[dict[str, Any]]:
    """The model in the shape of ``accel.formats.nydus.file_tree`` (without nlink/hardlink fields)."""
    out = []
    for path in sorted(fs, key=lambda p: p.encode("utf-8", "surrogateescape")):
        e = fs[path]
        item: dict[str, Any] = {
            "path": path,
            "type": e.type,
            "mode": f"{e.mode:04o}",
            "uid": e.uid,
            "gid": e.gid,
        }
        if e.type == "reg":
            item["size"] = e.size
            item["sha256"] = e.sha256
        if e.type == "symlink":
            item["target"] = e.target
        else:
            item["mtime"] = e.mtime
        out.append(item)
    return out
