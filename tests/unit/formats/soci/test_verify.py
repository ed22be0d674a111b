"""The verifier accepts soci's zTOCs and catches any corruption of the layer or of the zTOC."""

from __future__ import annotations

import dataclasses
import gzip
import io
import random

import pytest

from accel.errors import FormatError
from accel.formats.soci import build_ztoc, read_ztoc, verify_ztoc
from accel.formats.soci.zinfo import PACKED_CHECKPOINT_SIZE
from accel.oci.digest import of_bytes

from .conftest import DATA, SPAN, ZTOC_FIXTURES


def _fixture(name: str, layer: str, compression: str) -> tuple[bytes, bytes]:
    ztoc = (DATA / "ztoc" / f"{name}.span{SPAN}.ztoc").read_bytes()
    data = (DATA / "layers" / layer).read_bytes()
    return ztoc, gzip.decompress(data) if compression == "uncompressed" else data


@pytest.mark.parametrize(("name", "layer", "compression"), ZTOC_FIXTURES)
def test_accepts_soci_ztocs(name: str, layer: str, compression: str) -> None:
    ztoc, data = _fixture(name, layer, compression)
    report = verify_ztoc(ztoc, io.BytesIO(data))
    decoded = read_ztoc(ztoc)
    assert report.entries == len(decoded.toc) and report.spans == decoded.max_span_id + 1
    assert report.compressed_size == len(data)


@pytest.mark.parametrize(("name", "layer", "compression"), ZTOC_FIXTURES)
def test_flipped_layer_byte_is_caught(name: str, layer: str, compression: str) -> None:
    ztoc, data = _fixture(name, layer, compression)
    rnd = random.Random(7)
    for pos in [0, 15, len(data) // 3, len(data) - 3, *rnd.sample(range(10, len(data)), 6)]:
        bad = bytearray(data)
        bad[pos] ^= 1 << rnd.randrange(8)
        with pytest.raises(FormatError):
            verify_ztoc(ztoc, io.BytesIO(bytes(bad)))
    # Like soci, the zTOC does not cover the gzip header's mtime/OS bytes; the layer digest does.
    bad = bytearray(data)
    bad[5] ^= 1
    with pytest.raises(FormatError):
        verify_ztoc(ztoc, io.BytesIO(bytes(bad)), layer_digest=of_bytes(data))
    verify_ztoc(ztoc, io.BytesIO(data), layer_digest=of_bytes(data))


@pytest.mark.parametrize(("name", "layer", "compression"), ZTOC_FIXTURES)
def test_flipped_ztoc_byte_is_caught(name: str, layer: str, compression: str) -> None:
    ztoc, data = _fixture(name, layer, compression)
    rnd = random.Random(11)
    positions = rnd.sample(range(len(ztoc)), 25)
    if compression == "gzip":  # bytes of checkpoint windows that no span refers back to are covered too
        tail = len(ztoc) - 20_000
        positions += [tail, tail + PACKED_CHECKPOINT_SIZE // 2]
    for pos in positions:
        bad = bytearray(ztoc)
        bad[pos] ^= 1 << rnd.randrange(8)
        with pytest.raises(FormatError):
            verify_ztoc(bytes(bad), io.BytesIO(data))


def test_truncated_or_other_layer_is_caught() -> None:
    ztoc, data = _fixture("layer-pax", "layer-pax.tar.gz", "gzip")
    with pytest.raises(FormatError):
        verify_ztoc(ztoc, io.BytesIO(data[:-100]))
    other = (DATA / "layers" / "layer-gnu.tar.gz").read_bytes()
    with pytest.raises(FormatError):
        verify_ztoc(ztoc, io.BytesIO(other))
    multi = (DATA / "layers" / "layer-pax-multimember.tar.gz").read_bytes()  # same tar, other gzip
    with pytest.raises(FormatError):
        verify_ztoc(ztoc, io.BytesIO(multi))


def test_tampered_ztoc_objects_are_caught() -> None:
    ztoc_bytes, data = _fixture("layer-pax", "layer-pax.tar.gz", "gzip")
    ztoc = read_ztoc(ztoc_bytes)
    first_file = next(i for i, me in enumerate(ztoc.toc) if me.type == "reg")
    bigger = dataclasses.replace(
        ztoc.toc[first_file], uncompressed_size=ztoc.toc[first_file].uncompressed_size + 1
    )
    cases = [
        dataclasses.replace(ztoc, max_span_id=ztoc.max_span_id + 1, _raw=None),
        dataclasses.replace(ztoc, span_digests=ztoc.span_digests[:-1], _raw=None),
        dataclasses.replace(ztoc, uncompressed_archive_size=ztoc.uncompressed_archive_size - 512, _raw=None),
        dataclasses.replace(ztoc, toc=ztoc.toc[:-1], _raw=None),
        dataclasses.replace(
            ztoc, toc=[*ztoc.toc[:first_file], bigger, *ztoc.toc[first_file + 1 :]], _raw=None
        ),
        dataclasses.replace(ztoc, version="1.0", _raw=None),
    ]
    for case in cases:
        with pytest.raises(FormatError):
            verify_ztoc(case, io.BytesIO(data))


def test_own_output_verifies() -> None:
    _, data = _fixture("layer-gnu", "layer-gnu.tar.gz", "gzip")
    ztoc = build_ztoc(io.BytesIO(data), span_size=100_000)
    assert verify_ztoc(ztoc, io.BytesIO(data)).spans == ztoc.max_span_id + 1 > 6
