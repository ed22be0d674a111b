"""Reading a RAFS v5 image back for tests: the v5 reader's raw inode records plus the data blobs, in the shape
of ``tests.support.oci_apply.as_tree``. It does not go through the ``Node`` tree the builder writes from."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Mapping
from typing import Any

from accel.formats.nydus import constants as c
from accel.formats.nydus.chunkcodec import decompress
from accel.formats.nydus.reader import file_type_name
from accel.formats.nydus.reader_v5 import V5Bootstrap, V5Inode, read_bootstrap_v5


def file_data(bs: V5Bootstrap, rec: V5Inode, blobs: Mapping[str, bytes]) -> bytes:
    """A regular file's content, chunk by chunk from the blob its chunk info names."""
    out = bytearray()
    for i, ch in enumerate(rec.chunks):
        assert ch.file_offset == i * bs.block_size
        raw = blobs[bs.blob_ids[ch.blob_index]][
            ch.compressed_offset : ch.compressed_offset + ch.compressed_size
        ]
        data = decompress(bs.compressor, raw, ch.uncompressed_size) if ch.flags & c.CHUNK_COMPRESSED else raw
        assert len(data) == ch.uncompressed_size
        out += data
    assert len(out) == rec.size
    return bytes(out)


def v5_tree(bootstrap: bytes, blobs: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """Every entry of the image: path, type, mode, uid, gid, size + sha256 of files, symlink target, mtime."""
    bs = read_bootstrap_v5(bootstrap)
    out = []
    for path, index in bs.entries:
        rec = bs.inodes[index]
        kind = file_type_name(rec.mode)
        item: dict[str, Any] = {
            "path": path.decode("utf-8", "surrogateescape"),
            "type": kind,
            "mode": f"{stat.S_IMODE(rec.mode):04o}",
            "uid": rec.uid,
            "gid": rec.gid,
        }
        if kind == "reg":
            item["size"] = rec.size
            item["sha256"] = hashlib.sha256(file_data(bs, rec, blobs)).hexdigest()
        if kind == "symlink":
            assert rec.symlink is not None
            item["target"] = rec.symlink.decode("utf-8", "surrogateescape")
        else:
            item["mtime"] = rec.mtime
        out.append(item)
    return out
