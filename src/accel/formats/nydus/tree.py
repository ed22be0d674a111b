"""The in-memory file tree shared by the builder, the merger and the bootstrap writer.

A hardlink is the same ``Node`` object under several names: names live in the parent's ``children``.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field


@dataclass(eq=False)
class Chunk:
    """One chunk of a data blob, as recorded in the chunk table and the inode's chunk indexes."""

    digest: bytes
    blob_index: int
    ci_index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed: bool
    crc32: int = 0
    has_crc32: bool = False


@dataclass(eq=False)
class Node:
    """A file, directory, symlink or special file."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    size: int = 0
    rdev: int = 0
    symlink: bytes | None = None
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    children: dict[bytes, Node] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def new_dir(mode: int = 0o755) -> Node:
    """A synthesised directory (``TarBuilder::create_directory``: 0755, root-owned, mtime 0)."""
    return Node(mode=stat.S_IFDIR | mode)


def iter_tree(root: Node, prefix: bytes = b"") -> list[tuple[bytes, Node]]:
    """(path, node) of every entry, root first as ``/``, children in name order."""
    out: list[tuple[bytes, Node]] = [(prefix or b"/", root)]
    for name in sorted(root.children):
        child = root.children[name]
        path = prefix + b"/" + name
        if child.is_dir:
            out.extend(iter_tree(child, path))
        else:
            out.append((path, child))
    return out
