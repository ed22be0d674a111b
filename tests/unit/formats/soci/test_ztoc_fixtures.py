"""zTOCs are byte-identical to soci-snapshotter's own output (fixtures made by its ztoc package)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json

import pytest

from accel.formats.soci import FileMetadata, Ztoc, build_ztoc, read_ztoc
from accel.formats.soci.zinfo import decode_gzip_zinfo, decode_tar_zinfo
from accel.formats.soci.ztoc import marshal

from .conftest import DATA, SHARED, SPAN, TOOL, ZTOC_FIXTURES


def _layer(layer: str, compression: str) -> bytes:
    data = (DATA / "layers" / layer).read_bytes()
    return gzip.decompress(data) if compression == "uncompressed" else data


@pytest.mark.parametrize(("name", "layer", "compression"), ZTOC_FIXTURES)
def test_build_is_byte_identical(name: str, layer: str, compression: str) -> None:
    want = (DATA / "ztoc" / f"{name}.span{SPAN}.ztoc").read_bytes()
    ztoc = build_ztoc(
        io.BytesIO(_layer(layer, compression)),
        span_size=SPAN,
        compression=compression,
        build_tool_identifier=TOOL,
    )
    assert ztoc.to_bytes() == want
    view = json.loads((DATA / "ztoc" / f"{name}.span{SPAN}.ztoc.json").read_text())
    assert ztoc.digest == view["ztoc_digest"] and ztoc.size == view["ztoc_size"]


def test_golden_write_ztoc() -> None:
    """soci's ``TestWriteZtoc`` constant (ztoc/ztoc_test.go)."""
    ztoc = Ztoc(
        version="0.9",
        build_tool_identifier="AWS SOCI CLI",
        compressed_archive_size=2000000,
        uncompressed_archive_size=2500000,
        toc=[FileMetadata("", "", 0, 0), FileMetadata("", "", 0, 0)],
        compression_algorithm="gzip",
        max_span_id=3,
        span_digests=[],
        checkpoints=bytes(65536),
    )
    data = ztoc.to_bytes()
    assert len(data) == 65928
    assert (
        hashlib.sha256(data).hexdigest() == "eba28fdf50b1b57543f57dd051b2468c1d4f57b64d2006c75aa4de1d03e6c7ec"
    )


@pytest.mark.parametrize(("name", "layer", "compression"), ZTOC_FIXTURES)
def test_read_matches_decoded_view(name: str, layer: str, compression: str) -> None:
    raw = (DATA / "ztoc" / f"{name}.span{SPAN}.ztoc").read_bytes()
    view = json.loads((DATA / "ztoc" / f"{name}.span{SPAN}.ztoc.json").read_text())
    ztoc = read_ztoc(raw)
    assert marshal(ztoc) == raw
    assert (ztoc.version, ztoc.build_tool_identifier) == (view["version"], view["build_tool_identifier"])
    assert ztoc.compressed_archive_size == view["compressed_archive_size"]
    assert ztoc.uncompressed_archive_size == view["uncompressed_archive_size"]
    assert ztoc.max_span_id == view["max_span_id"] and ztoc.span_digests == view["span_digests"]
    assert len(ztoc.toc) == len(view["toc"])
    for me, want in zip(ztoc.toc, view["toc"], strict=True):
        got = {
            "name": me.name,
            "type": me.type,
            "uncompressed_offset": me.uncompressed_offset,
            "uncompressed_size": me.uncompressed_size,
            "linkname": me.linkname,
            "mode": me.mode,
            "uid": me.uid,
            "gid": me.gid,
            "uname": me.uname,
            "gname": me.gname,
            "mod_time": me.mod_time,
            "devmajor": me.devmajor,
            "devminor": me.devminor,
            "pax": me.pax_records,
        }
        assert got == want
    if compression == "gzip":
        assert ztoc.compression_algorithm == "gzip"
        zinfo = decode_gzip_zinfo(ztoc.checkpoints)
        blob = view["checkpoints_blob"]
        assert (len(ztoc.checkpoints), len(zinfo.checkpoints), zinfo.span_size) == (
            blob["len"],
            blob["count"],
            blob["span_size"],
        )
        for cp, want_cp in zip(zinfo.checkpoints, blob["points"], strict=True):
            assert (cp.compressed, cp.uncompressed, cp.bits) == (
                want_cp["in"],
                want_cp["out"],
                want_cp["bits"],
            )
            assert hashlib.sha256(cp.window).hexdigest() == want_cp["window_sha256"]
    else:
        assert ztoc.compression_algorithm == "uncompressed"
        assert ztoc.checkpoints.hex() == view["checkpoints_hex"]
        tar_zinfo = decode_tar_zinfo(ztoc.checkpoints)
        assert (tar_zinfo.version, tar_zinfo.span_size, tar_zinfo.size) == (2, SPAN, 1471488)


def test_legacy_v1_checkpoint_blob_is_readable() -> None:
    ztoc = read_ztoc((DATA / "ztoc" / f"layer-pax.span{SPAN}.ztoc").read_bytes())
    v2 = decode_gzip_zinfo(ztoc.checkpoints)
    v1_blob = ztoc.checkpoints[:12] + ztoc.checkpoints[12 + 32785 :]  # v1 omits checkpoint 0
    v1 = decode_gzip_zinfo(v1_blob)
    assert v1.version == 1 and v2.version == 2
    assert v1.checkpoints[1:] == v2.checkpoints[1:]
    assert (v1.checkpoints[0].compressed, v1.checkpoints[0].uncompressed) == (10, 0)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared fixtures not available")
def test_copies_match_shared_fixtures() -> None:
    for sub in ("layers", "ztoc", "index-examples"):
        for original in sorted((SHARED / sub).iterdir()):
            assert (DATA / sub / original.name).read_bytes() == original.read_bytes(), original.name
