"""Absolute and unclean tar entry names, compared with what Go's estargz does with them (issue 18, 3).

The reference (stargz-snapshotter's ``estargz.Build`` and ``Writer.AppendTar``) writes each tar header and
its TOC ``name`` exactly as the source had it, ``/etc/evil_abs`` included; it cleans a name only to use it
as a key: ``path.Clean("/" + name)`` without the leading slash decides duplicates (the last entry wins),
hardlink targets and prioritized files, and is what the reader looks entries up by. So ``/etc/x`` and
``etc/x`` are one file, and an absolute name never reaches above the root. These tests hold our eStargz
and stargz-flavoured zstd:chunked output to that, name for name, and have the Go verifier accept it.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.formats import estargz, zstdchunked
from accel.formats.tar import clean_path
from tests.interop.estargz.test_go_reference import go_verify

pytestmark = pytest.mark.interop


def absolute_layer() -> bytes:
    buf = io.BytesIO()
    members: list[tuple[str, bytes, str]] = [
        ("/etc/", tarfile.DIRTYPE, ""),
        ("/etc/evil_abs", tarfile.REGTYPE, ""),
        ("etc/dup", tarfile.REGTYPE, ""),
        ("/etc/dup", tarfile.REGTYPE, ""),  # the same path as the line above: this one wins
        ("//usr/./bin/../bin/tool", tarfile.REGTYPE, ""),
        ("./rel/file", tarfile.REGTYPE, ""),
        ("/abs-symlink", tarfile.SYMTYPE, "/etc/evil_abs"),
        ("/abs-hardlink", tarfile.LNKTYPE, "/etc/evil_abs"),
    ]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n, (name, kind, link) in enumerate(members):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, link, 1_700_000_000
            data = f"content {n} of {name}\n".encode() if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def go_convert(esgzref: Path, tmp: Path, source: bytes, *flags: str) -> bytes:
    (tmp / "src.tar").write_bytes(source)
    command = [str(esgzref), "convert", *flags, str(tmp / "src.tar"), str(tmp / "go.out")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (tmp / "go.out").read_bytes()


def toc_names(esgzref: Path, tmp: Path, blob: bytes) -> list[tuple[str, str, str]]:
    (tmp / "blob").write_bytes(blob)
    proc = subprocess.run(
        [str(esgzref), "toc", str(tmp / "blob")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries = json.loads(proc.stdout)["entries"]
    return [(e["name"], e["type"], e.get("linkName", "")) for e in entries if e["type"] != "chunk"]


def tar_names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return [m.name for m in tar.getmembers()]


def test_estargz_names_are_the_references(esgzref: Path, tmp_path: Path) -> None:
    source = absolute_layer()
    reference = go_convert(esgzref, tmp_path, source)
    out = io.BytesIO()
    result = estargz.build(io.BytesIO(source), out, estargz.BuildOptions())
    ours = out.getvalue()
    expected = toc_names(esgzref, tmp_path, reference)
    assert toc_names(esgzref, tmp_path, ours) == expected
    assert tar_names(ours) == tar_names(reference)
    names = [name for name, _, _ in expected]
    assert "/etc/evil_abs" in names and names.count("/etc/dup") == 1 and "etc/dup" not in names
    assert all(clean_path(name) and not clean_path(name).startswith("/") for name in names)
    go_verify(esgzref, tmp_path, ours, result, source)


def test_stargz_zstd_names_are_the_references(esgzref: Path, tmp_path: Path) -> None:
    source = absolute_layer()
    reference = go_convert(esgzref, tmp_path, source, "-zstd")
    out = io.BytesIO()
    result = zstdchunked.build(io.BytesIO(source), out, zstdchunked.ZstdChunkedOptions(flavour="stargz"))
    assert toc_names(esgzref, tmp_path, out.getvalue()) == toc_names(esgzref, tmp_path, reference)
    go_verify(esgzref, tmp_path, out.getvalue(), result, source)


@pytest.mark.parametrize("name", ["../escape", "/../../escape", "a/../../escape"])
def test_names_above_the_root_are_refused_by_both(name: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo(name))
    for build in (
        lambda: estargz.build(io.BytesIO(buf.getvalue()), io.BytesIO(), estargz.BuildOptions()),
        lambda: zstdchunked.build(
            io.BytesIO(buf.getvalue()), io.BytesIO(), zstdchunked.ZstdChunkedOptions(flavour="stargz")
        ),
    ):
        with pytest.raises(FormatError, match="escapes the root"):
            build()
