"""Test layer tars (Python ``tarfile``) covering what the Nydus builder must handle."""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import dataclass, field

MTIME = 1_700_000_000


@dataclass
class Item:
    name: str
    kind: str = "reg"  # reg, dir, symlink, hardlink, fifo, chr, blk
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    target: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, str] = field(default_factory=dict)


_TYPES = {
    "reg": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
}


def make_tar(items: list[Item], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=fmt) as tf:
        for it in items:
            ti = tarfile.TarInfo(it.name)
            ti.type = _TYPES[it.kind]
            ti.mode = it.mode
            ti.uid, ti.gid = it.uid, it.gid
            ti.mtime = it.mtime
            ti.linkname = it.target
            ti.devmajor, ti.devminor = it.dev
            if it.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in it.xattrs.items()}
            if it.kind == "reg":
                ti.size = len(it.data)
                tf.addfile(ti, io.BytesIO(it.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def rich_layer(seed: int = 1) -> list[Item]:
    """Every entry type, multi-chunk and mostly-zero files, big dirs, long and non-ASCII names, xattrs."""
    rnd = random.Random(seed)
    big = rnd.randbytes(2 * 1024 * 1024 + 12345)
    zeros = bytearray(16 * 1024 * 1024)
    zeros[:100] = rnd.randbytes(100)
    zeros[-50:] = rnd.randbytes(50)
    text = b"".join(b"line %d of some compressible text\n" % i for i in range(3000))
    items = [
        Item("./", "dir", mode=0o755, mtime=MTIME - 5),
        Item("a/", "dir", mode=0o750, uid=1000, gid=1000),
        Item("a/b/", "dir"),
        Item("a/b/c/", "dir", mode=0o700),
        Item("a/b/c/deep.txt", data=text),
        Item("a/empty"),
        Item("a/exact-1m", data=rnd.randbytes(1024 * 1024)),
        Item("a/big.bin", data=big),
        Item("a/dup-of-text", data=text),
        Item("a/zeros16m", data=bytes(zeros)),
        Item("a/setuid", data=b"#!/bin/sh\n", mode=0o4755),
        Item("a/hardlink-to-deep", "hardlink", target="a/b/c/deep.txt"),
        Item("a/link", "symlink", target="b/c/deep.txt", mode=0o777),
        Item("a/long-link", "symlink", target="x/" * 900 + "end", mode=0o777),
        Item("a/dangling", "symlink", target="/does/not/exist", mode=0o777),
        Item("dev/", "dir"),
        Item("dev/fifo", "fifo"),
        Item("dev/null", "chr", mode=0o666, dev=(1, 3)),
        Item("dev/sda1", "blk", mode=0o660, gid=6, dev=(8, 1)),
        Item("!first", data=b"sorts before dot"),
        Item("#hash", data=b"hash"),
        Item("-dash", data=b"dash"),
        Item("ids", data=b"big ids", uid=100000, gid=200000),
        Item("xattr-file", data=b"with xattrs", xattrs={"user.comment": "hello", "trusted.t": "v"}),
        Item("one-xattr", data=b"one", xattrs={"security.selinux": "system_u:object_r:bin_t:s0"}),
        Item("ünïcødé-文件", data=b"non-ascii"),
        Item("long/", "dir"),
        Item("long/" + "d" * 120 + "/", "dir"),
        Item("long/" + "d" * 120 + "/" + "f" * 200, data=b"long path"),
        Item("wh/", "dir"),
        Item("wh/.wh.something", data=b""),
        Item("many/", "dir"),
    ]
    for i in range(300):
        items.append(Item(f"many/file-{i:03d}-{'x' * 20}", data=b"%d" % i))
    items.append(Item("a/zz-hardlink-2", "hardlink", target="a/big.bin"))
    items.append(Item("a/zz-hardlink-3", "hardlink", target="a/big.bin"))
    return items
