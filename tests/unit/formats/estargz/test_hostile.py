"""Broken or hostile layers raise FormatError naming the entry (both formats)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable

import pytest

from accel.errors import FormatError
from accel.formats import estargz, zstdchunked
from tests.support.layers import gzipped, layer_with, small_layer

Converter = Callable[[bytes], object]


def to_estargz(tar: bytes) -> object:
    return estargz.build(io.BytesIO(tar), io.BytesIO())


def to_storage(tar: bytes) -> object:
    return zstdchunked.build(io.BytesIO(tar), io.BytesIO())


def to_stargz_zstd(tar: bytes) -> object:
    opts = zstdchunked.ZstdChunkedOptions(flavour="stargz")
    return zstdchunked.build(io.BytesIO(tar), io.BytesIO(), opts)


CONVERTERS = pytest.mark.parametrize("convert", [to_estargz, to_storage, to_stargz_zstd])


def _with(info: tarfile.TarInfo, data: bytes = b"", **open_kw: object) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, **open_kw) as tf:  # type: ignore[call-overload]
        ok = tarfile.TarInfo("fine")
        tf.addfile(ok)
        info.size = len(data) if info.type in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@CONVERTERS
@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/../../etc/passwd"])
def test_path_traversal_is_refused(convert: Converter, name: str) -> None:
    with pytest.raises(FormatError) as err:
        convert(layer_with([(name, tarfile.REGTYPE, b"x")]))
    assert err.value.entry == name


@CONVERTERS
def test_hardlink_escaping_the_root_is_refused(convert: Converter) -> None:
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.LNKTYPE, "../../etc/shadow"
    with pytest.raises(FormatError) as err:
        convert(_with(link))
    assert err.value.entry == "../../etc/shadow" or err.value.entry == "link"


@CONVERTERS
def test_symlinks_may_point_anywhere(convert: Converter) -> None:
    link = tarfile.TarInfo("usr/lib/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../share/x"
    convert(_with(link))


@CONVERTERS
def test_contiguous_file_type_is_unsupported(convert: Converter) -> None:
    info = tarfile.TarInfo("contig")
    info.type = tarfile.CONTTYPE
    with pytest.raises(FormatError) as err:
        convert(_with(info, b"data"))
    assert err.value.entry == "contig"


@CONVERTERS
def test_pax_global_header_is_unsupported(convert: Converter) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "g"}) as tf:
        tf.addfile(tarfile.TarInfo("fine"))
    with pytest.raises(FormatError, match="unsupported"):
        convert(buf.getvalue())


@CONVERTERS
def test_truncated_gzip_names_the_last_entry(convert: Converter) -> None:
    packed = gzipped(small_layer())
    with pytest.raises(FormatError) as err:
        convert(packed[: len(packed) // 2])
    assert err.value.entry is not None


@CONVERTERS
def test_truncated_tar_is_an_error(convert: Converter) -> None:
    tar = layer_with([("a", tarfile.REGTYPE, b"x" * 5000)])
    with pytest.raises(FormatError) as err:
        convert(tar[:2000])
    assert err.value.entry == "a"


@CONVERTERS
def test_garbage_is_an_error(convert: Converter) -> None:
    with pytest.raises(FormatError):
        convert(b"\x01" * 4096)


@CONVERTERS
def test_non_utf8_name_is_refused(convert: Converter) -> None:
    name = b"bad-\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(FormatError) as err:
        convert(layer_with([(name, tarfile.REGTYPE, b"x")], fmt=tarfile.GNU_FORMAT))
    assert err.value.entry == name


def test_estargz_hardlink_to_missing_target_is_refused() -> None:
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.LNKTYPE, "missing"
    with pytest.raises(FormatError) as err:
        to_estargz(_with(link))
    assert err.value.entry == "link"
