"""Reader and verifier, on our blobs and on blobs written by the Go reference (tests/data/estargz)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.formats import estargz, zstdchunked
from accel.formats.estargz import NO_PREFETCH_LANDMARK, is_estargz, open_blob, verify
from accel.formats.estargz.toc import clean_name
from tests.support.layers import expected_entries, gzipped, small_layer

DATA = Path(__file__).resolve().parents[3] / "data" / "estargz"


def reference(name: str) -> tuple[bytes, dict[str, str]]:
    blob = (DATA / name).read_bytes()
    meta = json.loads((DATA / f"{name}.json").read_text())
    return blob, meta


@pytest.mark.parametrize(("name", "kind"), [("small-go.esgz", "gzip"), ("small-go-zstd.blob", "zstd")])
def test_reference_blobs_verify_and_give_the_reference_diff_id(name: str, kind: str) -> None:
    blob, meta = reference(name)
    opened = open_blob(blob)
    assert opened.kind == kind
    assert opened.toc_digest == meta["toc_digest"]
    assert opened.entries[0].name == NO_PREFETCH_LANDMARK
    result = verify(opened, meta["toc_digest"])
    assert result.diff_id == meta["diff_id"]
    names = {clean_name(e.name) for e in opened.entries if e.type != "chunk"} - {NO_PREFETCH_LANDMARK}
    assert names == set(expected_entries(small_layer()))


def ours() -> tuple[bytes, str]:
    out = io.BytesIO()
    result = estargz.build(io.BytesIO(small_layer()), out, estargz.BuildOptions(chunk_size=4096))
    return out.getvalue(), result.toc_digest


def test_is_estargz() -> None:
    blob, _ = ours()
    assert is_estargz(blob)
    assert is_estargz(reference("small-go-zstd.blob")[0])
    assert not is_estargz(gzipped(small_layer()))
    assert not is_estargz(blob[:-1])
    assert not is_estargz(b"")
    storage = io.BytesIO()
    zstdchunked.build(io.BytesIO(small_layer(duplicate=False)), storage)
    assert not is_estargz(storage.getvalue())


def test_is_estargz_reads_files_with_pread() -> None:
    blob, digest = ours()
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.flush()
        assert is_estargz(f)
        assert verify(f, digest).entries > 0


def test_wrong_toc_digest_is_refused() -> None:
    blob, digest = ours()
    with pytest.raises(FormatError, match="TOC digest"):
        verify(blob, "sha256:" + "1" * 64)
    verify(blob, digest, full=False)


def test_flipped_payload_byte_is_caught() -> None:
    blob, digest = ours()
    opened = open_blob(blob)
    big = max((e for e in opened.entries if e.type in ("reg", "chunk")), key=lambda e: e.chunkSize or e.size)
    damaged = bytearray(blob)
    damaged[big.offset + 200] ^= 0x55
    with pytest.raises(FormatError):
        verify(bytes(damaged), digest)


def test_flipped_toc_byte_changes_the_digest_or_breaks_the_toc() -> None:
    blob, digest = ours()
    toc_offset = open_blob(blob).toc_offset
    damaged = bytearray(blob)
    damaged[toc_offset + 30] ^= 0x01
    with pytest.raises(FormatError):
        verify(bytes(damaged), digest)


def test_truncated_blob_does_not_open() -> None:
    blob, _ = ours()
    with pytest.raises(FormatError, match="not an eStargz blob"):
        open_blob(blob[: len(blob) // 2])


def test_toc_offsets_must_be_unique() -> None:
    blob, _ = ours()
    opened = open_blob(blob)
    data = [e for e in opened.entries if e.type in ("reg", "chunk") and e.offset]
    data[1].offset = data[0].offset
    with pytest.raises(FormatError, match="found twice"):
        verify(opened, opened.toc_digest)
