"""stargz-snapshotter's zstd:chunked flavour, and tar-split encoding."""

from __future__ import annotations

import hashlib
import io
import struct

import zstandard

from accel.formats import estargz, zstdchunked
from accel.formats.estargz import NO_PREFETCH_LANDMARK, TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from accel.formats.zstdchunked.stargz import MANIFEST_CHECKSUM_KEY, MANIFEST_POSITION_KEY
from accel.formats.zstdchunked.tarsplit import FILE_TYPE, SEGMENT_TYPE, TarSplitWriter, parse_tarsplit
from tests.support.layers import small_layer


def test_stargz_flavour_layout_and_annotations() -> None:
    out = io.BytesIO()
    opts = zstdchunked.ZstdChunkedOptions(flavour="stargz", chunk_size=4096)
    result = zstdchunked.build(io.BytesIO(small_layer()), out, opts)
    blob = out.getvalue()
    assert result.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert blob[-48:-40] == b"\x50\x2a\x4d\x18" + struct.pack("<I", 40)
    toc_offset, clen, ulen, kind = struct.unpack("<4Q", blob[-40:-8])
    assert blob[-8:] == b"GnUlInUx" and kind == 1
    toc_json = zstandard.ZstdDecompressor().decompress(blob[toc_offset : toc_offset + clen])
    assert len(toc_json) == ulen
    ann = result.annotations
    assert ann[TOC_DIGEST_ANNOTATION] == "sha256:" + hashlib.sha256(toc_json).hexdigest() == result.toc_digest
    assert (
        ann[MANIFEST_CHECKSUM_KEY]
        == "sha256:" + hashlib.sha256(blob[toc_offset : toc_offset + clen]).hexdigest()
    )
    assert ann[MANIFEST_POSITION_KEY] == f"{toc_offset}:{clen}:{ulen}:1"
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    assert ann[UNCOMPRESSED_SIZE_ANNOTATION] == str(len(plain)) == str(result.uncompressed_size)
    assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert not plain.endswith(bytes(1024)) or b"stargz.index.json" not in plain
    opened = estargz.open_blob(blob)
    assert opened.kind == "zstd" and opened.entries[0].name == NO_PREFETCH_LANDMARK
    assert estargz.verify(opened, result.toc_digest).diff_id == result.diff_id


def test_tarsplit_round_trip() -> None:
    writer = TarSplitWriter()
    writer.segment(b"header")
    writer.segment(b"")  # skipped, like Go
    writer.file(b"a/b", 3, b"\x00" * 8)
    writer.file(b"bad-\xff", 0, None)
    writer.trailer(b"\0" * 10)
    raw = writer.getvalue()
    assert raw.count(b"\n") == 5
    assert b'"name_raw"' in raw and b'"payload":null' in raw
    entries = list(parse_tarsplit(raw))
    assert [(e.type, e.name, e.size, e.payload, e.position) for e in entries] == [
        (SEGMENT_TYPE, b"", 0, b"header", 0),
        (FILE_TYPE, b"a/b", 3, b"\x00" * 8, 1),
        (FILE_TYPE, b"bad-\xff", 0, None, 2),
        (SEGMENT_TYPE, b"", 0, b"\0" * 10, 3),
        (SEGMENT_TYPE, b"", 0, b"", 4),
    ]
