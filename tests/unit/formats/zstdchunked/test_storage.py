"""containers/storage zstd:chunked: lossless frames, TOC, tar-split, footer, annotations, verifier."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile

import pytest
import zstandard

from accel.errors import FormatError
from accel.formats import zstdchunked
from accel.formats.zstdchunked import (
    MANIFEST_CHECKSUM_KEY,
    MANIFEST_POSITION_KEY,
    TARSPLIT_POSITION_KEY,
    ZstdChunkedOptions,
    open_storage_blob,
    verify_storage,
)
from accel.formats.zstdchunked.tarsplit import FILE_TYPE, parse_tarsplit
from tests.support.layers import expected_entries, file_contents, gzipped, layer_with, payload, small_layer
from tests.unit.formats.zstdchunked.rollsum_reference import reference_pieces


def convert(tar: bytes, **options: object) -> tuple[bytes, zstdchunked.BuildResult]:
    out = io.BytesIO()
    result = zstdchunked.build(io.BytesIO(tar), out, ZstdChunkedOptions(**options))  # type: ignore[arg-type]
    return out.getvalue(), result


LAYER = small_layer(duplicate=False)


def test_lossless_diff_id_and_plain_decompression() -> None:
    blob, result = convert(LAYER)
    assert result.diff_id == "sha256:" + hashlib.sha256(LAYER).hexdigest()
    assert result.uncompressed_size == len(LAYER)
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    assert plain == LAYER  # skippable frames are invisible to ordinary readers
    assert result.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_annotations_footer_and_positions_agree() -> None:
    blob, result = convert(LAYER)
    ann = result.annotations
    assert set(ann) == {MANIFEST_CHECKSUM_KEY, MANIFEST_POSITION_KEY, TARSPLIT_POSITION_KEY}
    assert "containerd.io/snapshot/stargz/toc.digest" not in ann
    moff, mlen, mulen, mtype = (int(x) for x in ann[MANIFEST_POSITION_KEY].split(":"))
    toff, tlen, tulen = (int(x) for x in ann[TARSPLIT_POSITION_KEY].split(":"))
    assert mtype == 1
    assert ann[MANIFEST_CHECKSUM_KEY] == "sha256:" + hashlib.sha256(blob[moff : moff + mlen]).hexdigest()
    assert result.toc_digest == ann[MANIFEST_CHECKSUM_KEY]
    assert blob[moff - 8 : moff] == b"\x50\x2a\x4d\x18" + struct.pack("<I", mlen)
    footer = blob[-64:]
    assert blob[-72:-64] == b"\x50\x2a\x4d\x18" + struct.pack("<I", 64)
    assert footer[56:] == b"GNUlInUx"
    assert struct.unpack("<7Q", footer[:56]) == (moff, mlen, mulen, 1, toff, tlen, tulen)
    opened = open_storage_blob(blob)
    assert opened.toc["tarSplitDigest"] == "sha256:" + hashlib.sha256(blob[toff : toff + tlen]).hexdigest()
    assert len(opened.tarsplit) == tulen
    assert open_storage_blob(blob, ann).toc == opened.toc


def test_verifier_reassembles_the_original() -> None:
    blob, result = convert(LAYER)
    checked = verify_storage(blob, result.toc_digest, original=io.BytesIO(LAYER))
    assert checked.diff_id == result.diff_id
    assert checked.entries == len(expected_entries(LAYER))


# 63 bytes 0xff then 0xde make the rolling sum's low 16 bits all ones (worked out by hand), so a chunk ends.
TRIGGER = b"\xff" * 63 + b"\xde"


def test_toc_entries_and_chunks() -> None:
    data = payload(10_000, 7) + TRIGGER + payload(3000, 9) + bytes(5000) + payload(100, 8)
    tar = layer_with(
        [("d/", tarfile.DIRTYPE, b""), ("d/f", tarfile.REGTYPE, data), ("d/e", tarfile.REGTYPE, b"")]
    )
    blob, result = convert(tar)
    entries = open_storage_blob(blob).entries
    want = reference_pieces(data)
    assert [(s, e, z) for s, e, z in want if z] == [(13_064, 18_064, True)]
    assert any(e == 10_064 for _, e, _ in want)  # the trigger ends a chunk
    assert [(e["type"], e["name"]) for e in entries] == [
        ("dir", "d/"), ("reg", "d/f"), *[("chunk", "d/f")] * (len(want) - 1), ("reg", "d/e"),
    ]  # fmt: skip
    f = entries[1]
    pieces = entries[1 : 1 + len(want)]
    assert [p.get("chunkOffset", 0) for p in pieces] == [s for s, _, _ in want]
    assert [p["chunkSize"] for p in pieces] == [e - s for s, e, _ in want]
    assert [p.get("chunkType", "") for p in pieces] == ["zeros" if z else "" for _, _, z in want]
    assert [p["chunkDigest"] for p in pieces] == [
        "sha256:" + hashlib.sha256(data[s:e]).hexdigest() for s, e, _ in want
    ]
    assert f["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert f["endOffset"] > pieces[-1]["offset"] > f["offset"]
    assert entries[0]["modtime"] == "2023-11-14T22:13:20Z" and entries[0]["mode"] == 0o644
    assert "digest" not in entries[-1] and "offset" not in entries[-1]
    verify_storage(blob, result.toc_digest, original=io.BytesIO(tar))


def test_chunk_size_sets_the_rolling_checksum_bits() -> None:
    data = payload(200_000, 3)
    tar = layer_with([("f", tarfile.REGTYPE, data)])
    blob, result = convert(tar, chunk_size=4096)
    pieces = [e for e in open_storage_blob(blob).entries if e["name"] == "f"]
    assert [p["chunkSize"] for p in pieces] == [e - s for s, e, _ in reference_pieces(data, bits=12)]
    verify_storage(blob, result.toc_digest, original=io.BytesIO(tar))
    for bad in (1000, 1, 1 << 21):
        with pytest.raises(FormatError, match="power of two"):
            convert(tar, chunk_size=bad)


def test_single_chunk_files_have_no_chunk_fields() -> None:
    blob, _ = convert(layer_with([("f", tarfile.REGTYPE, b"hello")]))
    (entry,) = open_storage_blob(blob).entries
    assert set(entry) == {"type", "name", "mode", "size", "modtime", "digest", "offset", "endOffset"}


def test_tarsplit_lists_every_entry_with_crc64() -> None:
    blob, _ = convert(LAYER)
    files = [e for e in parse_tarsplit(open_storage_blob(blob).tarsplit) if e.type == FILE_TYPE]
    with tarfile.open(fileobj=io.BytesIO(LAYER)) as tf:
        assert [f.name.decode() for f in files] == [
            m.name + ("/" if m.isdir() else "") for m in tf.getmembers()
        ]
    import fastcrc

    contents = file_contents(LAYER)
    for f in files:
        name = f.name.decode()
        if f.size:
            assert f.payload == fastcrc.crc64.go_iso(contents[name]).to_bytes(8, "big")
        else:
            assert f.payload is None


def test_gzip_input_converts_losslessly() -> None:
    blob, result = convert(gzipped(LAYER))
    assert result.diff_id == "sha256:" + hashlib.sha256(LAYER).hexdigest()
    verify_storage(blob, result.toc_digest, original=io.BytesIO(LAYER))


def test_gzip_input_larger_than_one_read_gives_the_same_blob() -> None:
    # ~6 MB of files: the rolling checksum and the compression read the spool while it is still written.
    tar = layer_with([(f"f{i}", tarfile.REGTYPE, payload(150_000 + i, i)) for i in range(40)])
    plain, r1 = convert(tar)
    packed, r2 = convert(gzipped(tar))
    assert packed == plain and r1 == r2 and r1.entries == 40
    verify_storage(packed, r2.toc_digest, original=io.BytesIO(tar))


def test_duplicate_paths_cannot_be_carried() -> None:
    with pytest.raises(FormatError) as err:
        convert(small_layer())
    assert err.value.entry == "etc/dup"


def test_trailing_bytes_after_end_of_archive_are_kept() -> None:
    tar = layer_with([("f", tarfile.REGTYPE, b"x")]) + bytes(3 * 512)
    blob, result = convert(tar)
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    verify_storage(blob, result.toc_digest, original=io.BytesIO(tar))


def test_wrong_checksum_and_damage_are_caught() -> None:
    blob, result = convert(LAYER)
    with pytest.raises(FormatError, match="manifest checksum"):
        verify_storage(blob, "sha256:" + "2" * 64)
    opened = open_storage_blob(blob)
    reg = next(e for e in opened.entries if e["type"] == "reg" and e.get("size", 0) > 1000)
    damaged = bytearray(blob)
    damaged[reg["offset"] + 20] ^= 0x40
    with pytest.raises(FormatError):
        verify_storage(bytes(damaged), result.toc_digest)
    with pytest.raises(FormatError):
        verify_storage(blob, result.toc_digest, original=io.BytesIO(LAYER[:-1] + b"\x01"))


def test_toc_and_tarsplit_must_match() -> None:
    blob, result = convert(LAYER)
    opened = open_storage_blob(blob)
    opened.toc["entries"][1]["mode"] = 0o777
    with pytest.raises(FormatError, match="metadata differ"):
        verify_storage(opened, result.toc_digest)
    opened = open_storage_blob(blob)
    opened.toc["entries"].append(dict(opened.toc["entries"][0]))
    with pytest.raises(FormatError, match="duplicate"):
        verify_storage(opened, result.toc_digest)


def test_tarsplit_digest_is_checked() -> None:
    blob, result = convert(LAYER)
    opened = open_storage_blob(blob)
    opened.tarsplit_compressed += b"x"
    with pytest.raises(FormatError, match="tar-split digest"):
        verify_storage(opened, result.toc_digest)


def test_manifest_json_is_compact_and_versioned() -> None:
    blob, _ = convert(LAYER)
    opened = open_storage_blob(blob)
    raw = zstandard.ZstdDecompressor().decompress(opened.manifest_compressed)
    assert json.loads(raw)["version"] == 1
    assert b"\n" not in raw


@pytest.mark.parametrize("data", [b"", bytes(1024), bytes(10240)], ids=["nothing", "eoa", "record"])
def test_empty_layers_convert(data: bytes) -> None:
    blob, result = convert(data)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert open_storage_blob(blob).entries == []
    assert verify_storage(blob, result.toc_digest, original=io.BytesIO(data)).uncompressed_size == len(data)
