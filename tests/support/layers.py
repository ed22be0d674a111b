"""Test layers (uncompressed tar bytes) with the edge cases lazy-pulling formats must carry.

Written with Python's tarfile so that tests need no external tool. Reusable by every format's tests.
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile

import zstandard

MIB = 1 << 20
CHUNK = 4 * MIB

# A binary xattr value with a NUL and bytes that are not UTF-8 (tarfile writes it with hdrcharset=BINARY).
# It is a well-formed vfs_cap_data revision 2 (20 bytes), so a kernel accepts it when a runtime unpacks.
BINARY_XATTR = b"\x01\x00\x00\x02\xff\xfe\x00\x10" + bytes(12)
LONG_NAME = "long/" + "n" * 141 + ".txt"  # 150 bytes: too long for USTAR name, needs PAX
UTF8_NAME = "unicode/h\u00e9llo-w\u00f6rld-\u65e5\u672c.txt"


def payload(size: int, seed: int) -> bytes:
    """Deterministic, partly compressible bytes."""
    rnd = random.Random(seed)
    block = rnd.randbytes(4096)
    out = bytearray()
    while len(out) < size:
        out += block if rnd.random() < 0.5 else rnd.randbytes(4096)
    return bytes(out[:size])


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    mtime: float = 1700000000,
    uid: int = 0,
    gid: int = 0,
    uname: str = "",
    gname: str = "",
    link: str = "",
    dev: tuple[int, int] = (0, 0),
    pax: dict[str, str] | None = None,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid, info.gid, info.uname, info.gname = uid, gid, uname, gname
    info.linkname = link
    info.devmajor, info.devminor = dev
    if pax:
        info.pax_headers = dict(pax)
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def edge_layer(*, fmt: int = tarfile.PAX_FORMAT, big: bool = True, duplicate: bool = True) -> bytes:
    """The edge-case layer; ``big`` adds the 4 MiB, 4 MiB+1 and 3-chunk files (about 18 MB);
    ``duplicate`` writes ``etc/dup`` twice (the second one wins)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        _add(tar, "etc/", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "etc/hostname", data=b"edge\n")
        _add(tar, "etc/empty", data=b"")
        if duplicate:
            _add(tar, "etc/dup", data=b"first version\n")
        _add(tar, "tmp/", tarfile.DIRTYPE, mode=0o1777)
        _add(tar, "usr/", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "usr/bin/", tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000, uname="alice", gname="staff")
        _add(tar, "usr/bin/suid", data=b"#!/bin/sh\necho hi\n", mode=0o4755)
        _add(tar, "usr/bin/link-to-suid", tarfile.LNKTYPE, mode=0o4755, link="usr/bin/suid")
        _add(tar, "usr/bin/sym", tarfile.SYMTYPE, mode=0o777, link="suid")
        _add(tar, "usr/bin/owned", data=b"owned\n", uid=1000, gid=1000, uname="alice", gname="staff")
        _add(tar, "usr/bin/numeric", data=b"numeric\n", uid=4242, gid=4343)
        # Parents without directory entries.
        _add(tar, "dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
        _add(tar, "dev/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0))
        _add(tar, "run/fifo", tarfile.FIFOTYPE, mode=0o600)
        _add(tar, "times/zero", data=b"zero mtime\n", mtime=0)
        _add(tar, "times/fraction-up", data=b"0.6\n", mtime=1700000000.6)
        _add(tar, "times/fraction-down", data=b"0.4\n", mtime=1700000000.4)
        if fmt == tarfile.PAX_FORMAT:
            xattrs = {
                "SCHILY.xattr.user.text": "hello world",
                "SCHILY.xattr.user.empty": "",
                "SCHILY.xattr.security.capability": BINARY_XATTR.decode("utf-8", "surrogateescape"),
            }
            _add(tar, "xattr/file", data=b"has xattrs\n", pax=xattrs)
        _add(tar, LONG_NAME, data=b"long name\n")
        _add(tar, UTF8_NAME, data=b"non-ascii name\n")
        # Runs of zeros (zstd:chunked "zeros" chunks), one shorter than 1024 bytes.
        holes = payload(70_000, 4) + bytes(100_000) + payload(5_000, 5) + bytes(1000) + payload(3, 6)
        _add(tar, "data/holes", data=holes + bytes(2048))
        if big:
            _add(tar, "data/exact4m", data=payload(CHUNK, 1))
            _add(tar, "data/exact4m1", data=payload(CHUNK + 1, 2))
            _add(tar, "data/chunked", data=payload(2 * CHUNK + 1_200_000, 3))
            _add(tar, "data/hardlink-to-chunked", tarfile.LNKTYPE, link="data/chunked")
        _add(tar, "etc/dup", data=b"second version wins\n", mode=0o600)
    return buf.getvalue()


def small_layer(*, duplicate: bool = True) -> bytes:
    """The edge-case layer without its big files, for quick tests."""
    return edge_layer(big=False, duplicate=duplicate)


def gzipped(tar: bytes) -> bytes:
    return gzip.compress(tar, 6, mtime=0)


def zstded(tar: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(tar)


def expected_entries(tar: bytes) -> dict[str, tarfile.TarInfo]:
    """Entries by cleaned name as a reader of the layer sees them (duplicates: the last wins)."""
    out: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:*") as tf:
        for info in tf:
            out[info.name.strip("/").removeprefix("./")] = info
    return out


def file_contents(tar: bytes) -> dict[str, bytes]:
    """Contents of the regular files by cleaned name (the last duplicate wins)."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:*") as tf:
        for info in tf:
            if info.isreg():
                f = tf.extractfile(info)
                assert f is not None
                out[info.name.strip("/").removeprefix("./")] = f.read()
    return out


def layer_with(entries: list[tuple[str, bytes, bytes]], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A layer from (name, tar type, data) triples, for hostile or odd inputs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, data in entries:
            _add(tar, name, kind, data)
    return buf.getvalue()
