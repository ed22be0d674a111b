"""``DriverContext.open_image``: another image resolved once per conversion, its manifests listed, its blobs
read by ranges and known as where those blobs come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from accel.converter.context import OtherImages, RepositoryOpener
from accel.converter.repositories import ImageRepository, open_repository
from accel.errors import ConversionError
from accel.oci.layout import OCILayout
from accel.oci.reference import LayoutReference, parse_image_ref
from accel.registry import RegistryClient
from tests.support.images import build_multiplatform_image, build_simple_image


def _opener(calls: list[str]) -> RepositoryOpener:
    client = RegistryClient({})

    def open_reference(reference: str) -> tuple[ImageRepository, str]:
        calls.append(reference)
        ref = parse_image_ref(reference)
        assert isinstance(ref, LayoutReference)
        return open_repository(ref, client), ref.tag or ""

    return open_reference


def test_an_index_lists_every_manifest_and_is_resolved_once(tmp_path: Path) -> None:
    image = build_multiplatform_image(tmp_path / "multi")
    calls: list[str] = []
    images = OtherImages(_opener(calls))
    opened = images.open(image.ref)
    assert images.open(image.ref) is opened and calls == [image.ref]
    assert opened.reference.endswith("@" + image.descriptor.digest)
    assert [d.digest for d, _ in opened.manifests] == [m.descriptor.digest for m in image.images]
    assert [d.platform for d, _ in opened.manifests] == [m.platform for m in image.images]
    layer = opened.manifests[1][1].layers[0]
    data = OCILayout(image.layout).read_blob(layer.digest)
    assert opened.read_at(layer)(10, 20) == data[10:30]
    assert images.origin(layer.digest) is opened.repository
    assert images.origin("sha256:" + "0" * 64) is None


def test_a_single_manifest_is_its_own_entry(tmp_path: Path) -> None:
    image = build_simple_image(tmp_path / "one", {"a": b"1"})
    opened = OtherImages(_opener([])).open(image.ref)
    ((descriptor, manifest),) = opened.manifests
    assert descriptor.digest == image.descriptor.digest
    assert [layer.digest for layer in manifest.layers] == [layer.digest for layer in image.images[0].layers]


def test_without_an_opener_nothing_is_opened() -> None:
    with pytest.raises(ConversionError, match="no other image"):
        OtherImages(None).open("r.example/dict:v1")
