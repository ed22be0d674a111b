"""Consumer-side lookups (ToC and tar-header walk), blob.meta files and the bootstrap layer tar."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.formats.nydus import (
    Options,
    blob_meta_file,
    bootstrap_layer_tar,
    build_layer,
    extract_via_toc,
    merge,
    read_blob,
    read_bootstrap,
    validate,
)
from accel.formats.nydus import constants as c
from accel.formats.nydus.ondisk import BlobMetaHeader
from tests.support.nydus_layers import Item, make_tar

DATA = Path(__file__).parents[3] / "data" / "nydus"
INLINE_NAME = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"


def _layer() -> tuple[bytes, bytes]:
    out = io.BytesIO()
    items = [Item("a", data=b"hello " * 5000), Item("b", data=bytes(range(256)) * 40)]
    res = build_layer(io.BytesIO(make_tar(items)), out, Options())
    return out.getvalue(), res.blob_meta


def test_toc_and_header_walk_agree_on_our_blob() -> None:
    raw, meta = _layer()
    blob = read_blob(raw)
    assert extract_via_toc(raw, "image.boot") == blob.bootstrap()
    assert extract_via_toc(raw, "image.blob") == blob.section_bytes("image.blob")
    assert extract_via_toc(raw, "blob.digest") == blob.section_bytes("blob.digest")
    assert blob_meta_file(raw) == meta
    with pytest.raises(FormatError):
        extract_via_toc(raw, "nope")
    with pytest.raises(FormatError):
        extract_via_toc(raw[:-512], "image.boot")


def test_toc_lookup_on_fixture_with_offset_quirk() -> None:
    raw = (DATA / "v6-inline-toc" / INLINE_NAME).read_bytes()
    assert extract_via_toc(raw, "image.boot") == (DATA / "v6-inline-toc" / "image.boot").read_bytes()
    chunks = extract_via_toc(raw, "image.blob")  # its ToC offset is the data size (2022 bug)
    assert len(chunks) == 2829
    meta = blob_meta_file(raw)
    assert len(meta) == 8192 and BlobMetaHeader.decode(meta[4096:]).ci_entries == 3


def test_bootstrap_layer_tar() -> None:
    raw, meta = _layer()
    blob_id = hashlib.sha256(raw).hexdigest()
    boot = merge([(extract_via_toc(raw, "image.boot"), blob_id)])
    tar = bootstrap_layer_tar(boot, [(blob_id, meta)])
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
        assert [(m.name, m.type, m.mode, m.mtime) for m in members] == [
            ("image", tarfile.DIRTYPE, 0o755, 0),
            ("image/image.boot", tarfile.REGTYPE, 0o444, 0),
            (f"image/{blob_id}.blob.meta", tarfile.REGTYPE, 0o444, 0),
        ]
        boot_file = tf.extractfile("image/image.boot")
        assert boot_file is not None and boot_file.read() == boot
    assert len(tar) % 512 == 0 and tar.endswith(bytes(1024))
    bs = validate(read_bootstrap(boot), {blob_id: raw})
    assert [b.blob_id for b in bs.blobs] == [blob_id]
    header = BlobMetaHeader.decode(meta[-4096:])
    assert header.ci_offset == bs.blobs[0].ci_offset and header.ci_entries == bs.blobs[0].chunk_count
    with pytest.raises(FormatError):
        bootstrap_layer_tar(boot, [("../x", meta)])


def test_validate_catches_blob_table_mismatch() -> None:
    raw, _ = _layer()
    blob_id = hashlib.sha256(raw).hexdigest()
    boot = bytearray(merge([(extract_via_toc(raw, "image.boot"), blob_id)]))
    bs = read_bootstrap(bytes(boot))
    validate(bs, {blob_id: raw})
    off = bs.ext.blob_table_offset + 112  # ci_offset
    boot[off : off + 8] = (bs.blobs[0].ci_offset + 1).to_bytes(8, "little")
    with pytest.raises(FormatError):
        validate(bytes(boot), {blob_id: raw})
    assert c.PLACEHOLDER_BLOB_ID not in [b.blob_id for b in bs.blobs]
