"""Our output checked by the Go reference libraries Debian packages: eStargz and stargz zstd:chunked by
stargz-snapshotter v0.12 (estargz.Open, VerifyTOC, every chunk, the plain stream, the source layer), tar
headers by Go's archive/tar, and containers/storage zstd:chunked tar-split by vbatts/tar-split."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from accel.formats import estargz, zstdchunked
from accel.formats.tarwriter import FORMAT_GNU, FORMAT_PAX, FORMAT_USTAR, GoHeader, encode_header
from tests.support.layers import edge_layer, gzipped, zstded

pytestmark = pytest.mark.interop

PRIORITIZED = ("usr/bin/sym", "/etc/hostname", "data/hardlink-to-chunked", "./xattr/file")


def go_verify(esgzref: Path, tmp: Path, blob: bytes, result: estargz.BuildResult, source: bytes) -> str:
    (tmp / "blob").write_bytes(blob)
    (tmp / "source.tar").write_bytes(source)
    args = [str(tmp / "blob"), result.toc_digest, str(tmp / "source.tar"), result.diff_id]
    args.append(str(result.uncompressed_size))
    proc = subprocess.run([str(esgzref), "verify", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "RESULT failures=0" in proc.stdout
    return proc.stdout


Build = Callable[[bytes], tuple[bytes, estargz.BuildResult]]


def esgz(**options: object) -> Build:
    def run(source: bytes) -> tuple[bytes, estargz.BuildResult]:
        out = io.BytesIO()
        result = estargz.build(io.BytesIO(source), out, estargz.BuildOptions(**options))  # type: ignore[arg-type]
        return out.getvalue(), result

    return run


def stargz_zstd(**options: object) -> Build:
    def run(source: bytes) -> tuple[bytes, estargz.BuildResult]:
        out = io.BytesIO()
        opts = zstdchunked.ZstdChunkedOptions(flavour="stargz", **options)  # type: ignore[arg-type]
        result = zstdchunked.build(io.BytesIO(source), out, opts)
        return out.getvalue(), result

    return run


CASES = {
    "pax-default": (lambda: edge_layer(), esgz()),
    "gnu-default": (lambda: edge_layer(fmt=tarfile.GNU_FORMAT), esgz()),
    "gzip-input-isal": (lambda: gzipped(edge_layer()), esgz(backend="isal")),
    "zlib-ng": (lambda: edge_layer(), esgz(backend="zlib-ng")),
    "zstd-input-level1": (lambda: zstded(edge_layer()), esgz(compression_level=1)),
    "prioritized": (lambda: edge_layer(), esgz(prioritized_files=PRIORITIZED, compression_level=1)),
    "min-chunk-size": (lambda: edge_layer(), esgz(min_chunk_size=1 << 20, compression_level=1)),
    "stargz-zstd": (lambda: edge_layer(), stargz_zstd()),
    "stargz-zstd-prioritized": (lambda: edge_layer(), stargz_zstd(prioritized_files=PRIORITIZED)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_go_reference_accepts_our_blob(esgzref: Path, tmp_path: Path, case: str) -> None:
    make, run = CASES[case]
    source = make()
    blob, result = run(source)
    report = go_verify(esgzref, tmp_path, blob, result, source)
    assert "chunks=18" in report or "chunks=19" in report  # 3 + 2 + 1 pieces of the big files, landmark, …


def test_go_reference_rejects_a_damaged_blob(esgzref: Path, tmp_path: Path) -> None:
    source = edge_layer(big=False)
    blob, result = esgz()(source)
    opened = estargz.open_blob(blob)
    target = max((e for e in opened.entries if e.type == "reg"), key=lambda e: e.size)
    damaged = bytearray(blob)
    damaged[target.offset + 40] ^= 0x10
    (tmp_path / "blob").write_bytes(bytes(damaged))
    proc = subprocess.run(
        [str(esgzref), "verify", str(tmp_path / "blob"), result.toc_digest], capture_output=True, text=True
    )
    assert proc.returncode != 0


@pytest.mark.parametrize("zstd", [False, True])
def test_our_verifier_accepts_the_references_blob(esgzref: Path, tmp_path: Path, zstd: bool) -> None:
    (tmp_path / "src.tar").write_bytes(edge_layer())
    flags = ["-zstd"] if zstd else ["-level", "1"]
    proc = subprocess.run(
        [str(esgzref), "convert", *flags, str(tmp_path / "src.tar"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    meta = json.loads(proc.stdout)
    with open(tmp_path / "out", "rb") as f:
        assert estargz.is_estargz(f)  # type: ignore[arg-type]
        checked = estargz.verify(f, meta["toc_digest"])  # type: ignore[arg-type]
    assert checked.diff_id == meta["diff_id"]


def test_tarwriter_matches_go_tar_writer(esgzref: Path) -> None:
    long = "d" * 120
    T = 1_700_000_000_000_000_000
    PAX = FORMAT_PAX
    headers = [
        GoHeader("etc/hostname", size=5, mode=0o644, mtime_ns=1_700_000_000_000_000_000),
        GoHeader("stargz.index.json", size=100),
        GoHeader("a/" + "b" * 150, size=5, mtime_ns=1_700_000_000_600_000_000),
        GoHeader("x" * 99 + "/" + "y" * 50, size=5, mtime_ns=1),
        GoHeader("h\u00e9llo", mtime_ns=5),
        GoHeader("h\u00e9llo", mtime_ns=5, format=FORMAT_GNU),
        GoHeader("frac", mtime_ns=T + 600_000_000, format=FORMAT_PAX, pax_records={"mtime": "1700000000.6"}),
        GoHeader("frac2", mtime_ns=1_700_000_000_600_000_000, format=FORMAT_USTAR),
        GoHeader("neg", mtime_ns=-1_500_000_000, format=FORMAT_PAX),
        GoHeader("x", size=3, format=PAX, pax_records={"SCHILY.xattr.a": "", "SCHILY.xattr.b": "\x01"}),
        GoHeader("dir/", typeflag=b"5", mode=0o40755, uid=1000, gid=9, uname="alice", gname="g", mtime_ns=0),
        GoHeader("big", size=9 << 30, mtime_ns=0),
        GoHeader("big", size=9 << 30, mtime_ns=0, format=FORMAT_GNU),
        GoHeader("uid", uid=1 << 22, mtime_ns=0, format=FORMAT_GNU),
        GoHeader(long + "L", typeflag=b"1", linkname=long + "K", format=FORMAT_GNU, mtime_ns=0),
        GoHeader(long + "L", typeflag=b"2", linkname=long + "K", mtime_ns=0),
        GoHeader("dev", typeflag=b"3", devmajor=1, devminor=3, mtime_ns=0),
        GoHeader("regA/", typeflag=b"\x00"),
        GoHeader("u", uname="u" * 40, mtime_ns=0),
        GoHeader("gnu-times", mtime_ns=T + 600_000_000, format=FORMAT_GNU, atime_ns=T),
    ]  # fmt: skip
    payload = [
        {
            "Name": h.name, "Linkname": h.linkname, "Uname": h.uname, "Gname": h.gname,
            "Typeflag": h.typeflag.decode("latin-1"), "Size": h.size, "Mode": h.mode, "Devmajor": h.devmajor,
            "Devminor": h.devminor, "UID": h.uid, "GID": h.gid, "MtimeNs": h.mtime_ns, "AtimeNs": h.atime_ns,
            "CtimeNs": h.ctime_ns, "PAXRecords": h.pax_records, "Format": h.format,
        }
        for h in headers
    ]  # fmt: skip
    proc = subprocess.run(
        [str(esgzref), "headers"], input=json.dumps(payload), capture_output=True, text=True, check=True
    )
    go = json.loads(proc.stdout)
    assert [encode_header(h).hex() for h in headers] == go


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_go_tarsplit_library_reassembles_our_tarsplit(esgzref: Path, tmp_path: Path, fmt: int) -> None:
    source = edge_layer(fmt=fmt, duplicate=False) + bytes(4096)  # record padding after the end blocks
    out = io.BytesIO()
    zstdchunked.build(io.BytesIO(source), out)
    tarsplit = zstdchunked.open_storage_blob(out.getvalue()).tarsplit
    (tmp_path / "tarsplit.json").write_bytes(tarsplit)
    (tmp_path / "source.tar").write_bytes(source)
    cmd = [str(esgzref), "tarsplit", str(tmp_path / "tarsplit.json"), str(tmp_path / "source.tar")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"size={len(source)}" in proc.stdout
    # The library checks each file's CRC-64: a wrong one must fail.
    lines = tarsplit.splitlines()
    index = next(i for i, line in enumerate(lines) if b'"size":' in line)
    entry = json.loads(lines[index])
    entry["payload"] = "AAAAAAAAAAA="
    lines[index] = json.dumps(entry).encode()
    (tmp_path / "tarsplit.json").write_bytes(b"\n".join(lines) + b"\n")
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode != 0
