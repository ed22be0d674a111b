"""The RAFS v5 reader against the v5 fixture: tree, symlinks, hardlinks, and file contents (md5 list)."""

from __future__ import annotations

import hashlib
import json
import lzma
import stat
from pathlib import Path
from typing import Any

import pytest

from accel.errors import FormatError
from accel.formats.nydus.reader_v5 import V5Bootstrap, read_bootstrap_v5

DATA = Path(__file__).parents[3] / "data" / "nydus" / "v5-repeatable"
# Not under data/nydus/, which holds byte-for-byte copies of the shared fixtures only.
BLOB_XZ = Path(__file__).parents[3] / "data" / "nydus-v5-blob"
BLOB_ID = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"


def _expected() -> tuple[list[Any], dict[str, str]]:
    text = (DATA / "sha256-nocompress-repeatable.result").read_text()
    cut = text.index("\n]\n") + 3
    tree = json.loads(text[:cut])
    md5 = {}
    for line in text[cut:].splitlines():
        digest, path = line.split(None, 1)
        md5[path] = digest
    return tree, md5


def _tree_json(bs: V5Bootstrap, ino: int, name: str) -> dict[str, Any]:
    node = bs.inodes[ino]
    if stat.S_ISDIR(node.mode):
        kids = [bs.inodes[i] for i in range(node.child_index, node.child_index + node.child_count)]
        order = sorted(range(len(kids)), key=lambda k: kids[k].name)
        contents = [_tree_json(bs, node.child_index + k, kids[k].name.decode()) for k in order]
        return {"type": "directory", "name": name, "contents": contents}
    if stat.S_ISLNK(node.mode):
        assert node.symlink is not None
        return {"type": "link", "name": name, "target": node.symlink.decode(), "contents": []}
    return {"type": "file", "name": name}


def _bootstrap() -> V5Bootstrap:
    return read_bootstrap_v5((DATA / "sha256-nocompress-repeatable").read_bytes())


def test_v5_tree_matches_result() -> None:
    bs = _bootstrap()
    tree, _ = _expected()
    assert [_tree_json(bs, 1, "")] == tree[:1]
    assert bs.blob_ids == [BLOB_ID]
    assert bs.digester == "sha256" and bs.block_size == 0x100000


def test_v5_hardlinks_share_ino() -> None:
    bs = _bootstrap()
    inos = {p: bs.inodes[i].ino for p, i in bs.entries}
    assert (
        inos[b"/hardlink-test/foo"] == inos[b"/hardlink-test/test.sh"] == inos[b"/normal-file-test/test.sh"]
    )
    assert bs.inodes[dict(bs.entries)[b"/hardlink-test/foo"]].nlink == 3


def test_v5_contents_match_md5_list() -> None:
    bs = _bootstrap()
    # The 3.4 MiB blob, xz-compressed to 0.6 MiB so that it ships with the repository.
    blob = lzma.decompress((BLOB_XZ / f"{BLOB_ID}.xz").read_bytes())
    assert hashlib.sha256(blob).hexdigest() == BLOB_ID
    _, md5 = _expected()
    seen = 0
    for path, ino in bs.entries:
        node = bs.inodes[ino]
        if not stat.S_ISREG(node.mode):
            continue
        content = bytearray(node.size)
        for ch in node.chunks:
            piece = blob[ch.compressed_offset : ch.compressed_offset + ch.compressed_size]
            assert hashlib.sha256(piece).digest() == ch.digest
            content[ch.file_offset : ch.file_offset + len(piece)] = piece
        key = path.decode()
        if key in md5:
            assert hashlib.md5(content).hexdigest() == md5[key], key
            seen += 1
    assert seen == len(md5)


def test_v5_rejects_garbage() -> None:
    data = (DATA / "sha256-nocompress-repeatable").read_bytes()
    with pytest.raises(FormatError):
        read_bootstrap_v5(b"RAFS" + data[4:100])
    with pytest.raises(FormatError):
        read_bootstrap_v5(bytes(4) + data[4:])
