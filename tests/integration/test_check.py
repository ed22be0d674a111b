"""`accelctl check` and `converter.verify`: every driver's output passes; broken outputs fail naming the
layer, the file and the check.

The broken outputs are made by editing a converted OCI layout the way a faulty tool or a damaged store
would: a byte flipped in a chunk, a TOC cut short, an annotation that lies, a file missing from a layer,
a zTOC filed under another layer. Each edit rewrites the documents above it (new digests up to the tag),
so the only thing wrong is the thing the test broke.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from accel.config import Config
from accel.converter import CheckReport, Converter
from accel.drivers import ConvertedLayer, DriverContext
from accel.drivers.oci import OCIDriver
from accel.errors import ConversionError
from accel.formats import estargz, nydus
from accel.formats.chunked import FileBlob
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.layout import OCILayout
from accel.oci.manifest import Descriptor
from tests.support.configs import make_config
from tests.support.images import BIG_ZERO_FILE, BuiltImage, build_rich_image

pytestmark = pytest.mark.integration

Json = dict[str, Any]

DRIVERS: dict[str, tuple[str, dict[str, str]]] = {
    "oci": ("oci", {}),
    "estargz": ("estargz", {}),
    "estargz-prioritized": ("estargz", {"prioritized_files": "/app/hello.txt"}),
    "zstdchunked": ("zstdchunked", {}),
    "zstdchunked-stargz": ("zstdchunked", {"flavour": "stargz"}),
    "nydus": ("nydus", {}),
    "nydus-merged": ("nydus", {"merge_manifest": "true"}),
    "nydus-oci-ref": ("nydus", {"oci_ref": "true"}),
    "soci-v2": ("soci", {"index_version": "v2", "min_layer_size": "0"}),
}

#: The format each driver's layers are recognised as (the last Nydus layer is its bootstrap).
EXPECTED_FORMATS = {
    "oci": "oci",
    "estargz": "estargz",
    "estargz-prioritized": "estargz",
    "zstdchunked": "zstdchunked",
    "zstdchunked-stargz": "zstdchunked-stargz",
    "nydus": "nydus-blob",
    "nydus-merged": "nydus-blob",
    "nydus-oci-ref": "nydus-blob",
    "soci-v2": "oci",
}


#: Pseudo-random files, so that a lazy read of a small file is a small part of the image.
PAYLOAD = {"payload_size": 4 << 20, "payload_file_size": 1 << 20}
README = b"the application layer\n"


def rich_image(dest: Path, big_zero_size: int = 1 << 20) -> BuiltImage:
    return build_rich_image(dest, duplicate=False, big_zero_size=big_zero_size, **PAYLOAD)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return rich_image(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def outputs(source: BuiltImage, work: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every driver's output of the source image, each in a layout of its own, tag ``x``."""
    out = {}
    for name, (driver, options) in DRIVERS.items():
        dest = tmp_path_factory.mktemp(name)
        with Converter(driver_config(work, driver, options)) as converter:
            converter.convert(source.ref, target=f"oci:{dest}:x")
        out[name] = dest
    return out


def driver_config(
    work: Path, driver: str = "oci", options: dict[str, str] | None = None, **kw: Any
) -> Config:
    return make_config(work, {}, driver=driver, driver_config=options or {}, **kw)


def check(work: Path, target: Path, tag: str = "x", **kwargs: Any) -> CheckReport:
    with Converter(driver_config(work)) as converter:
        return converter.check(f"oci:{target}:{tag}", **kwargs)


def failure(report: CheckReport) -> str:
    assert not report.ok, "the check passed a broken image"
    return report.failures[0].describe()


# --- every driver's output passes ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DRIVERS))
def test_every_driver_output_passes(name: str, outputs: dict[str, Path], work: Path) -> None:
    report = check(work, outputs[name])

    assert report.ok, [f.describe() for f in report.failures]
    # merge_manifest: an index of the source image (OCI layers) and the Nydus one; both are checked.
    assert len(report.images) == (2 if name == "nydus-merged" else 1)
    image = report.images[-1]
    assert image.platform == "linux/amd64"
    formats = [f.check for f in image.findings if f.layer is not None and f.check != "soci"]
    assert formats[0] == EXPECTED_FORMATS[name]
    if name.startswith("nydus"):
        assert formats[-1] == "nydus-bootstrap"
    # The tree was compared with the source our annotations name, path by path.
    (tree,) = [f for f in image.findings if f.subject == "tree"]
    assert tree.ok and "paths equal oci:" in tree.detail
    if name == "soci-v2":
        ztocs = [f for f in image.findings if f.check == "soci"]
        assert len(ztocs) == 3 and all("spans" in f.detail for f in ztocs)


def test_no_source_skips_the_tree(outputs: dict[str, Path], work: Path) -> None:
    report = check(work, outputs["estargz"], compare=False)

    assert report.ok
    assert not [f for f in report.images[0].findings if f.subject == "tree"]


def test_a_source_with_other_files_is_a_tree_difference(
    outputs: dict[str, Path], work: Path, tmp_path: Path
) -> None:
    other = rich_image(tmp_path / "other", big_zero_size=2 << 20)

    report = check(work, outputs["estargz"], source=other.ref)

    text = failure(report)
    assert text.startswith("tree: source: differs from oci:")
    assert "app/zeros.bin" in text and "size" in text


# --- --lazy: files read through the layers' indexes, bytes counted ------------------------------------

LAZY_PATHS = ["/app/README", "/app/hardlink-to-readme", BIG_ZERO_FILE, "/etc/hostname"]


@pytest.mark.parametrize("name", list(DRIVERS))
def test_lazy_reads_through_each_index(name: str, outputs: dict[str, Path], work: Path) -> None:
    report = check(work, outputs[name], lazy=LAZY_PATHS)

    assert report.ok, [f.describe() for f in report.failures]
    image = report.images[-1]
    reads = {read.path: read for read in image.lazy}
    assert list(reads) == ["/app/README", "/app/hardlink-to-readme", "/" + BIG_ZERO_FILE, "/etc/hostname"]
    assert reads["/app/README"].size == reads["/app/hardlink-to-readme"].size == len(README)
    assert reads["/" + BIG_ZERO_FILE].size == 1 << 20
    assert image.lazy_total.bytes == sum(read.fetched.bytes for read in reads.values())
    layer_sizes = [f.layer for f in image.findings if f.check == "lazy" and f.layer is not None]
    assert layer_sizes, "each read names the layer it went through"
    kinds = {read.kind for read in reads.values()}
    if name == "oci":
        # No index: the layers from the top down to the one holding a file are fetched whole, once.
        sizes = [layer["size"] for layer in Layout(outputs[name]).image["layers"]]
        assert kinds == {"oci"} and image.lazy_total.bytes == sizes[1] + sizes[2]
    elif name == "soci-v2":
        # SOCI fetches by span (4 MiB of uncompressed tar, more than this image's payload layer holds
        # between two files) plus a zTOC per layer: less than the image, not a tenth of it.
        assert kinds == {"soci"} and image.lazy_total.bytes < 0.5 * image.image_bytes, image.lazy_total
    elif name == "nydus-oci-ref":
        # A zran chunk costs its inflate context of the original gzip layer, which the image bytes include:
        # from the checkpoint before it (up to two chunks of output or one of input), here about half of
        # this small image's layers; less than the image, not a tenth of it.
        assert image.lazy_total.bytes < 0.6 * image.image_bytes, image.lazy_total
    else:
        # The indexes and the files' chunks only: a small part of an image of 4 MiB of random data.
        assert image.lazy_total.bytes < 0.10 * image.image_bytes, image.lazy_total
    summary = image.findings[-1]
    assert summary.subject == "lazy" and f"of the image's {image.image_bytes} layer bytes" in summary.detail


def test_lazy_path_not_in_the_image_fails(outputs: dict[str, Path], work: Path) -> None:
    report = check(work, outputs["estargz"], lazy=["/app/remove-me.txt", "/app"])

    assert not report.ok
    first, second = report.failures[:2]
    assert first.entry == "/app/remove-me.txt" and "not in the image's file tree" in first.detail
    assert second.entry == "/app" and "a dir, not a regular file" in second.detail


# --- broken outputs fail, naming the layer, the file and the check -------------------------------------


class Layout:
    """Edits one converted image in a layout and re-tags it: the documents above an edit get new digests."""

    def __init__(self, path: Path, tag: str = "x") -> None:
        self.layout = OCILayout(path)
        self.tag = tag
        self.top = self.layout.resolve(tag)
        document = self._json(self.top.digest)
        self.index: Json | None = document if "manifests" in document else None
        if self.index is None:
            self.image_digest = self.top.digest
        else:
            (entry,) = [m for m in self.index["manifests"] if "artifactType" not in m]
            self.image_digest = entry["digest"]
        self.image = self._json(self.image_digest)
        self.config = self._json(self.image["config"]["digest"])

    def _json(self, digest: str) -> Json:
        data = json.loads(self.layout.read_blob(digest))
        assert isinstance(data, dict)
        return data

    def blob(self, position: int) -> bytes:
        return self.layout.read_blob(self.image["layers"][position]["digest"])

    def replace_layer(self, position: int, data: bytes, *, diff_id: str | None = None) -> None:
        layer = self.image["layers"][position]
        layer["digest"] = self.layout.write_blob(data)
        layer["size"] = len(data)
        if diff_id is not None:
            self.config["rootfs"]["diff_ids"][position] = diff_id

    def soci_index(self) -> Json:
        return self._json(self.image["annotations"][keys.SOCI_INDEX_DIGEST])

    def save(self, soci_index: Json | None = None) -> None:
        config = json.dumps(self.config).encode()
        self.image["config"]["digest"] = self.layout.write_blob(config)
        self.image["config"]["size"] = len(config)
        soci_descriptor = None
        if soci_index is not None:
            soci_descriptor = self._write(soci_index)
            self.image["annotations"][keys.SOCI_INDEX_DIGEST] = soci_descriptor.digest
        image = self._write(self.image)
        if self.index is None:
            self.layout.tag(image, self.tag)
            return
        for entry in self.index["manifests"]:
            if "artifactType" not in entry:
                entry["digest"], entry["size"] = image.digest, image.size
                if soci_descriptor is not None:
                    entry["annotations"][keys.SOCI_INDEX_DIGEST] = soci_descriptor.digest
            elif soci_descriptor is not None:
                entry["digest"], entry["size"] = soci_descriptor.digest, soci_descriptor.size
        self.layout.tag(self._write(self.index), self.tag)

    def _write(self, document: Json) -> Descriptor:
        data = json.dumps(document).encode()
        self.layout.write_blob(data)
        return Descriptor.of(data, document.get("mediaType", mt.OCI_MANIFEST))


def edited(outputs: dict[str, Path], name: str, tmp_path: Path, edit: Callable[[Layout], None]) -> Path:
    """A copy of driver ``name``'s output with ``edit`` applied."""
    dest = tmp_path / f"{name}-broken"
    subprocess.run(["cp", "-a", str(outputs[name]), str(dest)], check=True)
    layout = Layout(dest)
    edit(layout)
    return dest


def tar_without(tar: bytes, drop: Callable[[tarfile.TarInfo], bool]) -> tuple[bytes, str]:
    """``tar`` without its first member ``drop`` selects; returns the new tar and the dropped name."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tar)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        members = src.getmembers()
        dropped = next(m for m in members if drop(m))
        for member in members:
            if member is not dropped:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue(), dropped.name


def first_regular_chunk(path: Path) -> tuple[str, int]:
    """The name and blob offset of the first regular file with content in an eStargz layer."""
    with path.open("rb") as f:
        entries = estargz.open_blob(FileBlob(f)).entries
    entry = next(e for e in entries if e.type == "reg" and e.size > 64)
    return entry.name, entry.offset


def test_flipped_byte_in_an_estargz_chunk(outputs: dict[str, Path], work: Path, tmp_path: Path) -> None:
    seen: dict[str, str] = {}

    def flip(layout: Layout) -> None:
        layer = layout.image["layers"][1]
        path = layout.layout.blob_path(layer["digest"])
        name, offset = first_regular_chunk(path)
        blob = bytearray(path.read_bytes())
        blob[offset + 30] ^= 0xFF
        seen["name"] = name
        layout.replace_layer(1, bytes(blob))
        layout.save()

    report = check(work, edited(outputs, "estargz", tmp_path, flip))

    text = failure(report)
    assert text.startswith("layer 1 sha256:") and ": estargz: " in text
    assert report.failures[0].entry == seen["name"]


def test_truncated_toc(outputs: dict[str, Path], work: Path, tmp_path: Path) -> None:
    def cut(layout: Layout) -> None:
        blob = layout.blob(2)
        toc_offset = estargz.parse_footer(blob[-estargz.FOOTER_SIZE :])
        # The TOC member loses its second half; the footer (and the offset it holds) stays.
        middle = toc_offset + (len(blob) - estargz.FOOTER_SIZE - toc_offset) // 2
        layout.replace_layer(2, blob[:middle] + blob[-estargz.FOOTER_SIZE :])
        layout.save()

    report = check(work, edited(outputs, "estargz", tmp_path, cut))

    text = failure(report)
    assert text.startswith("layer 2 sha256:") and ": estargz: " in text and "TOC" in text


def test_wrong_toc_digest_annotation(outputs: dict[str, Path], work: Path, tmp_path: Path) -> None:
    def lie(layout: Layout) -> None:
        marks = layout.image["layers"][0]["annotations"]
        marks[keys.STARGZ_TOC_DIGEST] = "sha256:" + "0" * 64
        layout.save()

    report = check(work, edited(outputs, "estargz", tmp_path, lie))

    text = failure(report)
    assert text.startswith("layer 0 sha256:") and ": estargz: " in text and "sha256:" + "0" * 64 in text


def test_wrong_uncompressed_size_annotation(outputs: dict[str, Path], work: Path, tmp_path: Path) -> None:
    def lie(layout: Layout) -> None:
        marks = layout.image["layers"][1]["annotations"]
        marks[estargz.UNCOMPRESSED_SIZE_ANNOTATION] = str(
            int(marks[estargz.UNCOMPRESSED_SIZE_ANNOTATION]) + 1
        )
        layout.save()

    report = check(work, edited(outputs, "estargz", tmp_path, lie))

    assert estargz.UNCOMPRESSED_SIZE_ANNOTATION in failure(report)
    assert report.failures[0].layer == 1


def test_flipped_byte_in_a_zstdchunked_chunk(outputs: dict[str, Path], work: Path, tmp_path: Path) -> None:
    def flip(layout: Layout) -> None:
        blob = bytearray(layout.blob(1))
        blob[len(blob) // 3] ^= 0xFF
        layout.replace_layer(1, bytes(blob))
        layout.save()

    report = check(work, edited(outputs, "zstdchunked", tmp_path, flip))

    assert failure(report).startswith("layer 1 sha256:")
    assert report.failures[0].check == "zstdchunked"


def test_flipped_byte_in_a_nydus_chunk(outputs: dict[str, Path], work: Path, tmp_path: Path) -> None:
    def flip(layout: Layout) -> None:
        data = layout.blob(1)
        blob = nydus.read_blob(data)
        chunk = max(blob.chunks, key=lambda ci: ci.compressed_size)
        broken = bytearray(data)
        # The chunks come first in the blob (its tar headers follow the data they describe).
        broken[chunk.compressed_offset + chunk.compressed_size // 2] ^= 0xFF
        layout.replace_layer(1, bytes(broken))
        layout.save()

    report = check(work, edited(outputs, "nydus", tmp_path, flip))

    # The blob's own ToC digests its chunk section, so the flip is caught there, before the bootstrap.
    text = failure(report)
    assert text.startswith("layer 1 sha256:") and ": nydus-blob: " in text
    assert report.failures[0].entry == "image.blob" and "digest mismatch" in text


def test_missing_file_in_one_layer(outputs: dict[str, Path], work: Path, tmp_path: Path) -> None:
    """A layer that is self-consistent (its diff_id matches) but lacks a file: only the tree shows it."""
    seen: dict[str, str] = {}

    def drop(layout: Layout) -> None:
        plain, seen["name"] = tar_without(gzip.decompress(layout.blob(1)), lambda m: m.name == BIG_ZERO_FILE)
        layout.replace_layer(1, gzip.compress(plain), diff_id=Descriptor.of(plain, mt.OCI_LAYER).digest)
        layout.save()

    report = check(work, edited(outputs, "oci", tmp_path, drop))

    text = failure(report)
    assert text.startswith("tree: source: differs from oci:")
    assert report.failures[0].entry == "/" + seen["name"].lstrip("./")
    assert "missing" in text


def test_ztoc_for_another_layer(outputs: dict[str, Path], work: Path, tmp_path: Path) -> None:
    def swap(layout: Layout) -> None:
        index = layout.soci_index()
        first, second = index["layers"][0], index["layers"][1]
        # The zTOC of layer 1 filed under layer 0's digest.
        first["digest"], first["size"] = second["digest"], second["size"]
        layout.save(soci_index=index)

    report = check(work, edited(outputs, "soci-v2", tmp_path, swap))

    text = failure(report)
    assert text.startswith("layer 0 sha256:") and ": soci: zTOC sha256:" in text
    assert report.failures[0].check == "soci"


# --- converter.verify ----------------------------------------------------------------------------------


def test_verify_passes_and_tags(source: BuiltImage, work: Path, tmp_path: Path) -> None:
    config = driver_config(work, "estargz", converter__verify=True)
    with Converter(config) as converter:
        result = converter.convert(source.ref, target=f"oci:{tmp_path / 'out'}:x")

    assert any(note.startswith("verify: ") and "checks passed" in note for note in result.notes)
    assert "verify" in result.timings
    assert OCILayout(tmp_path / "out").tags() == ["x"]


def lossy_convert_layer(
    self: OCIDriver, layer: Descriptor, diff_id: str, ctx: DriverContext
) -> ConvertedLayer[None]:
    """The OCI driver's layer step, but the layer holding the big file loses it."""
    converted = ORIGINAL_CONVERT_LAYER(self, layer, diff_id, ctx)
    with ctx.open_layer(layer) as raw:
        tar = gzip.decompress(raw.read())
    if BIG_ZERO_FILE.encode() not in tar:
        return converted
    plain = tar_without(tar, lambda member: member.name == BIG_ZERO_FILE)[0]
    data = gzip.compress(plain)
    descriptor = converted.descriptor.replace(digest=ctx.put_blob(data), size=len(data))
    return ConvertedLayer(descriptor, Descriptor.of(plain, mt.OCI_LAYER).digest, None)


ORIGINAL_CONVERT_LAYER = OCIDriver.convert_layer


def test_verify_failure_fails_the_conversion_and_tags_nothing(
    source: BuiltImage, work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OCIDriver, "convert_layer", lossy_convert_layer)
    target = tmp_path / "out"
    converter = Converter(driver_config(work, "oci", converter__verify=True))
    with converter, pytest.raises(ConversionError) as failed:
        converter.convert(source.ref, target=f"oci:{target}:x")

    assert "failed its check (layer 1 sha256:" in failed.value.message
    assert "nothing was tagged" in failed.value.message
    assert not (target / "index.json").exists() or OCILayout(target).tags() == []
