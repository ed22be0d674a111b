"""Building zTOCs from generated layers: checkpoint rules, multi-member gzip, refusals, streaming."""

from __future__ import annotations

import gzip
import io
import itertools
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.formats.soci import build_ztoc, extract, read_ztoc, verify_ztoc
from accel.formats.soci.toc import format_time
from accel.formats.soci.zinfo import WINSIZE, decode_gzip_zinfo, decode_tar_zinfo
from tests.support.layers import edge_layer, file_contents, layer_with, payload, small_layer

SPAN = 1 << 16


class _Pipe(io.RawIOBase):
    """Non-seekable, short reads."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def,override]
        n = min(len(b), 5000, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _members(data: bytes, cuts: list[int], level: int = 6) -> bytes:
    """``data`` as concatenated gzip members split at ``cuts`` (like eStargz or a 2-part layer)."""
    bounds = [0, *cuts, len(data)]
    return b"".join(gzip.compress(data[a:b], level, mtime=0) for a, b in itertools.pairwise(bounds))


def _check_files(tar: bytes, blob: bytes, ztoc_bytes: bytes) -> None:
    """Every regular file read through the checkpoints equals its bytes in the tar (and tarfile's view)."""
    ztoc = read_ztoc(ztoc_bytes)
    last: dict[str, bytes] = {}
    for me in ztoc.toc:
        if me.type == "reg":
            got = extract(ztoc, io.BytesIO(blob), me.uncompressed_offset, me.uncompressed_size)
            assert got == tar[me.uncompressed_offset : me.uncompressed_offset + me.uncompressed_size], me.name
            last[me.name] = got
    assert last == file_contents(tar)


def test_edge_layer_gzip() -> None:
    tar = edge_layer(big=True)
    blob = gzip.compress(tar, 6, mtime=0)
    ztoc = build_ztoc(io.BytesIO(blob), span_size=1 << 20)
    points = decode_gzip_zinfo(ztoc.checkpoints).checkpoints
    assert (points[0].compressed, points[0].uncompressed, points[0].bits) == (10, 0, 0)
    assert points[0].window == bytes(WINSIZE)
    for prev, cur in itertools.pairwise(points):
        assert cur.uncompressed - prev.uncompressed > 1 << 20  # strictly more than a span apart
        assert cur.window == tar[cur.uncompressed - WINSIZE : cur.uncompressed]
    assert ztoc.max_span_id == len(points) - 1 == len(ztoc.span_digests) - 1
    assert ztoc.compressed_archive_size == len(blob)
    names = [me.name for me in ztoc.toc]
    assert "etc/" in names and "usr/bin/sym" in names and names.count("etc/dup") == 2
    by_name = {me.name: me for me in ztoc.toc}
    assert by_name["dev/null"].type == "char" and (
        by_name["dev/null"].devmajor,
        by_name["dev/null"].devminor,
    ) == (1, 3)
    assert by_name["usr/bin/link-to-suid"].type == "hardlink"
    assert by_name["times/fraction-up"].mod_time == "2023-11-14T22:13:20.6Z"
    assert by_name["xattr/file"].pax_records["SCHILY.xattr.user.text"] == "hello world"
    verify_ztoc(ztoc.to_bytes(), io.BytesIO(blob))
    _check_files(tar, blob, ztoc.to_bytes())


@pytest.mark.parametrize(
    "cuts",
    [[524288], [1, 2, 3, 40000, 40001], list(range(1000, 600000, 7919)), [100, 70000, 70001, 140000]],
)
def test_multi_member_gzip(cuts: list[int]) -> None:
    tar = small_layer() + layer_with([("big", tarfile.REGTYPE, payload(500_000, 9))])
    blob = _members(tar, [c for c in cuts if c < len(tar)])
    ztoc = build_ztoc(io.BytesIO(blob), span_size=SPAN)
    assert ztoc.uncompressed_archive_size <= len(tar)
    verify_ztoc(ztoc.to_bytes(), io.BytesIO(blob))  # windows are checked across member boundaries too
    _check_files(tar, blob, ztoc.to_bytes())


def test_streams_from_a_pipe_and_is_deterministic() -> None:
    blob = gzip.compress(small_layer(), 9, mtime=0)
    a = build_ztoc(_Pipe(blob), span_size=SPAN)  # type: ignore[arg-type]
    b = build_ztoc(io.BytesIO(blob), span_size=SPAN)
    assert a.to_bytes() == b.to_bytes() and a.digest == b.digest


@pytest.mark.parametrize("extra", [0, 1, 777])
def test_uncompressed_layer(extra: int) -> None:
    tar = small_layer()
    # extra == 0: the size is an exact multiple of the span, so there is no empty last span.
    span = len(tar) // 4 if extra == 0 else 4096
    blob = tar + bytes(extra)
    ztoc = build_ztoc(io.BytesIO(blob), span_size=span, compression="uncompressed")
    info = decode_tar_zinfo(ztoc.checkpoints)
    assert (info.span_size, info.size) == (span, len(blob))
    expected_spans = -(-len(blob) // span)
    assert ztoc.max_span_id == expected_spans - 1 == len(ztoc.span_digests) - 1
    verify_ztoc(ztoc.to_bytes(), io.BytesIO(blob))
    _check_files(tar, blob, ztoc.to_bytes())


def test_global_pax_header_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}) as tar:
        tar.addfile(tarfile.TarInfo("a"))
    with pytest.raises(FormatError) as err:
        build_ztoc(io.BytesIO(gzip.compress(buf.getvalue())), span_size=SPAN)
    assert "unsupported tar entry type" in str(err.value)


def test_contiguous_type_is_refused() -> None:
    tar = layer_with([("ok", tarfile.REGTYPE, b"1"), ("odd", tarfile.CONTTYPE, b"2")])
    with pytest.raises(FormatError) as err:
        build_ztoc(io.BytesIO(gzip.compress(tar)), span_size=SPAN)
    assert err.value.entry == "odd"


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize("args", [["--format=gnu"], ["--format=pax"]])
def test_sparse_files_are_refused(tmp_path: Path, args: list[str]) -> None:
    sparse = tmp_path / "holes"
    with open(sparse, "wb") as f:
        f.truncate(1 << 20)
        f.write(b"x")
    out = subprocess.run(
        ["tar", *args, "--sparse", "-cf", "-", "-C", str(tmp_path), "holes"], check=True, capture_output=True
    )
    with pytest.raises(FormatError) as err:
        build_ztoc(io.BytesIO(out.stdout), span_size=SPAN, compression="uncompressed")
    assert err.value.entry == "holes"


def test_bad_inputs() -> None:
    blob = gzip.compress(small_layer(), mtime=0)
    with pytest.raises(FormatError):
        build_ztoc(io.BytesIO(blob), span_size=SPAN, compression="zstd")
    with pytest.raises(FormatError):
        build_ztoc(io.BytesIO(blob[: len(blob) // 2]), span_size=SPAN)  # truncated
    with pytest.raises(FormatError):
        build_ztoc(io.BytesIO(blob + b"garbage!"), span_size=SPAN)  # soci fails on trailing garbage too
    with pytest.raises(FormatError):
        build_ztoc(io.BytesIO(zlib.compress(b"not a tar" * 100)), span_size=SPAN)


def test_mod_time_format() -> None:
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert format_time(1700000000, 123456789) == "2023-11-14T22:13:20.123456789Z"
    assert format_time(1700000000, 500000000) == "2023-11-14T22:13:20.5Z"
    assert format_time(-62135596800) == "0001-01-01T00:00:00Z"
    assert format_time(951782400) == "2000-02-29T00:00:00Z"
    assert format_time(253402300800) == ""  # year 10000: Go's MarshalText fails and soci writes ""


@pytest.mark.parametrize("level", [1, 9])
def test_buffer_sizes_do_not_change_checkpoints(monkeypatch: pytest.MonkeyPatch, level: int) -> None:
    """soci inflates 16 KiB of input at a time into a 32 KiB ring; our bigger buffers give the same zTOC."""
    from accel.formats.zran import inflater

    tar = small_layer() + layer_with([("big", tarfile.REGTYPE, payload(700_000, 3) + bytes(300_000))])
    blob = _members(tar, [300_001, 300_002, 650_000], level)
    ours = build_ztoc(io.BytesIO(blob), span_size=SPAN).to_bytes()
    monkeypatch.setattr(inflater, "_IN_CHUNK", 1 << 14)
    monkeypatch.setattr(inflater, "_RING", 1 << 15)
    assert build_ztoc(io.BytesIO(blob), span_size=SPAN).to_bytes() == ours
    monkeypatch.setattr(inflater, "_IN_CHUNK", 777)
    monkeypatch.setattr(inflater, "_RING", 40_000)
    assert build_ztoc(io.BytesIO(blob), span_size=SPAN).to_bytes() == ours


@pytest.mark.parametrize("level", [1, 6, 9])
def test_zlib_ng_and_the_system_zlib_give_the_same_ztoc(monkeypatch: pytest.MonkeyPatch, level: int) -> None:
    """Checkpoints are the stream's block boundaries, whichever library inflates: the faster zlib-ng (the
    default) and the system zlib agree byte for byte, and each one's checkpoints extract every file."""
    from accel.formats.zran import native as _zlib

    assert _zlib.lib().name.startswith("zlib-ng"), "the zlib_ng package is a dependency: it is used"
    tar = small_layer() + layer_with([("big", tarfile.REGTYPE, payload(900_000, 5) + bytes(200_000))])
    blob = _members(tar, [400_001], level)
    with_ng = build_ztoc(io.BytesIO(blob), span_size=SPAN).to_bytes()
    monkeypatch.setattr(_zlib, "lib", _zlib.system_lib)
    assert _zlib.lib().name.startswith("zlib ")
    with_system = build_ztoc(io.BytesIO(blob), span_size=SPAN).to_bytes()
    assert with_ng == with_system
    _check_files(tar, blob, with_system)
    monkeypatch.undo()
    _check_files(tar, blob, with_ng)
