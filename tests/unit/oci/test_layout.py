from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from accel.errors import ContentError, DigestMismatchError, InvalidReferenceError, NotFoundError
from accel.oci import mediatypes as mt
from accel.oci.digest import of_bytes
from accel.oci.layout import REF_NAME, OCILayout
from accel.oci.manifest import Descriptor, Index, Manifest


def _layout(tmp_path: Path) -> OCILayout:
    return OCILayout(tmp_path / "img").init()


def _leftovers(layout: OCILayout) -> list[str]:
    return [p.name for p in layout.path.rglob(".*")]


def test_init(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    assert json.loads((layout.path / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout.path / "index.json").read_bytes())
    assert index == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    assert layout.exists()
    layout.tag(Descriptor(mt.OCI_MANIFEST, of_bytes(b"x"), 1), "t")
    layout.init()  # idempotent: keeps the existing index
    assert layout.tags() == ["t"]


def test_not_a_layout(tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "nothing")
    assert not layout.exists()
    with pytest.raises(ContentError, match="not an OCI image layout"):
        layout.resolve("latest")


def test_blobs(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    data = b"hello blob"
    digest = layout.write_blob(data)
    assert digest == of_bytes(data)
    assert layout.blob_path(digest) == layout.path / "blobs" / "sha256" / digest.split(":")[1]
    assert layout.has_blob(digest)
    assert layout.read_blob(digest) == data
    with layout.open_blob(digest) as f:
        assert f.read() == data
    missing = of_bytes(b"missing")
    assert not layout.has_blob(missing)
    with pytest.raises(NotFoundError):
        layout.open_blob(missing)
    with pytest.raises(DigestMismatchError):
        layout.write_blob(b"other", expected_digest=digest)


def test_ingest_verifies_and_is_atomic(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    data = b"x" * 3_000_000
    digest, size = layout.ingest(io.BytesIO(data), of_bytes(data), len(data))
    assert (digest, size) == (of_bytes(data), len(data))
    wrong = of_bytes(b"something else")
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        layout.ingest(io.BytesIO(b"abc"), wrong)
    assert not layout.has_blob(wrong)
    assert not layout.has_blob(of_bytes(b"abc"))
    with pytest.raises(DigestMismatchError, match="size mismatch"):
        layout.ingest(io.BytesIO(b"abc"), of_bytes(b"abc"), 4)
    assert not layout.has_blob(of_bytes(b"abc"))
    assert _leftovers(layout) == []


def test_read_blob_detects_corruption(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    digest = layout.write_blob(b"good")
    layout.blob_path(digest).write_bytes(b"evil")
    with pytest.raises(DigestMismatchError):
        layout.read_blob(digest)
    assert layout.read_blob(digest, verify=False) == b"evil"
    with pytest.raises(DigestMismatchError), layout.open_blob(digest, verify=True) as f:
        f.read()
    good = layout.write_blob(b"fine")
    with layout.open_blob(good, verify=True) as f:
        assert f.read() == b"fine"


def test_tag_resolve(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    with pytest.raises(NotFoundError):
        layout.resolve(None)
    config = layout.write_blob(b"{}")
    m1 = Manifest(config=Descriptor(mt.OCI_CONFIG, config, 2), layers=[])
    d1 = layout.write_document(m1)
    layout.tag(d1, "one")
    assert layout.resolve(None).digest == d1.digest
    assert layout.resolve("one").annotations == {REF_NAME: "one"}
    m2 = Manifest(config=Descriptor(mt.OCI_CONFIG, config, 2), layers=[], annotations={"v": "2"})
    d2 = layout.write_document(m2)
    layout.tag(d2, "two")
    with pytest.raises(InvalidReferenceError, match="2 images"):
        layout.resolve(None)
    layout.tag(d2, "one")  # moves the tag: the old entry goes
    assert layout.tags() == ["two", "one"]
    assert layout.resolve("one").digest == d2.digest
    with pytest.raises(NotFoundError, match="nope"):
        layout.resolve("nope")
    doc = layout.read_document(layout.resolve("one"))
    assert isinstance(doc, Manifest) and doc.annotations == {"v": "2"}
    layout.add_untagged(d1)
    layout.add_untagged(d1)
    assert [d.digest for d in layout.index().manifests] == [d2.digest, d2.digest, d1.digest]
    assert _leftovers(layout) == []


def test_concurrent_tagging_loses_nothing(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    desc = Descriptor(mt.OCI_MANIFEST, of_bytes(b"m"), 1)
    barrier = threading.Barrier(6)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(5):
            OCILayout(layout.path).tag(desc, f"t{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(layout.tags()) == sorted(f"t{n}-{i}" for n in range(6) for i in range(5))


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_reads_our_layout(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    layer = b"\0" * 1024  # an empty tar archive
    layer_digest = layout.write_blob(layer)
    config = {
        "architecture": "arm64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": {"Labels": {"made-by": "layout.py"}},
    }
    config_bytes = json.dumps(config).encode()
    manifest = Manifest(
        config=Descriptor(mt.OCI_CONFIG, layout.write_blob(config_bytes), len(config_bytes)),
        layers=[Descriptor(mt.OCI_LAYER, layer_digest, len(layer))],
    )
    desc = layout.write_document(manifest)
    layout.tag(desc, "v1")
    index = Index(manifests=[desc.replace(platform=None)])
    layout.tag(layout.write_document(index), "idx")
    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout.path}:v1"], capture_output=True, text=True, check=True, timeout=60
    )
    info = json.loads(out.stdout)
    assert info["Digest"] == desc.digest
    assert info["Architecture"] == "arm64"
    assert info["Labels"] == {"made-by": "layout.py"}
    assert info["Layers"] == [layer_digest]
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout.path}:idx"], capture_output=True, check=True, timeout=60
    )
    assert raw.stdout == index.to_bytes()


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_we_read_a_layout_written_by_skopeo(tmp_path: Path) -> None:
    from tests.support.images import build_multiplatform_image

    source = build_multiplatform_image(tmp_path / "src", tag="src")
    cmd = [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--all",
        "--format",
        "oci",
        source.ref,
        f"oci:{tmp_path}/copy:c1",
    ]
    subprocess.run(cmd, capture_output=True, check=True, timeout=60)
    copy = OCILayout(tmp_path / "copy")
    assert copy.tags() == ["c1"]
    desc = copy.resolve(None)
    index = copy.read_document(desc)
    assert isinstance(index, Index)
    assert [str(d.platform) for d in index.manifests] == ["linux/amd64", "linux/arm64/v8"]
    for child in index.manifests:
        manifest = copy.read_document(child)
        assert isinstance(manifest, Manifest)
        for layer in manifest.layers:
            assert len(copy.read_blob(layer.digest)) == layer.size


def test_link_blob_shares_the_verified_file(tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "layout").init()
    source = tmp_path / "store-blob"
    source.write_bytes(b"verified content")
    digest = of_bytes(b"verified content")
    assert layout.link_blob(source, digest)
    assert layout.blob_path(digest).stat().st_ino == source.stat().st_ino
    assert layout.read_blob(digest) == b"verified content"
    assert layout.link_blob(source, digest), "an existing blob is fine"
    assert not layout.link_blob(tmp_path / "missing", of_bytes(b"other"))
