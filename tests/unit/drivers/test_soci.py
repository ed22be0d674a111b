"""The soci driver's image rewrite is formats/soci's: on soci's own index examples it produces soci's bytes.

The driver runs on the examples' image (its real config and layer blobs from tests/data/soci) through a
context that serves those blobs from memory: everything past the context is the production code. The
converter adds its marks to a real conversion's manifest (tests/integration/test_soci_driver.py covers
that path on a registry); here ``SourceImage.annotations`` is empty so the digests can be soci's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, BinaryIO

from accel.drivers.base import ConvertedImage, SourceImage
from accel.drivers.soci import SociDriver
from accel.formats import soci
from accel.oci.digest import of_bytes
from accel.oci.manifest import Descriptor, ImageConfig, Manifest
from accel.oci.platform import Platform

DATA = Path(__file__).parents[2] / "data" / "soci"
EXAMPLES = DATA / "index-examples"
SPAN = 262144
TOOL = "AWS SOCI CLI v0.2"  # what soci's examples were built with
PLATFORM = Platform("linux", "amd64")
# The examples index the second layer only: the first (110 bytes) is under soci's minimum layer size.
OPTIONS = {"span_size": str(SPAN), "min_layer_size": "1000", "build_tool_identifier": TOOL}


def _example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


class _Blobs:
    """The driver's view of the conversion: source layers by digest, new blobs kept in memory."""

    def __init__(self, layers: dict[str, bytes]) -> None:
        self.layers = layers
        self.stored: dict[str, bytes] = {}
        self.notes: list[str] = []

    def open_layer(self, layer: Descriptor) -> BinaryIO:
        return io.BytesIO(self.layers[layer.digest])

    def put_blob(self, data: bytes) -> str:
        digest = of_bytes(data)
        self.stored[digest] = data
        return digest

    def new_blob(self) -> Any:
        raise AssertionError("the soci driver writes only small blobs")

    def read_blob(self, digest: str) -> bytes:
        return self.stored[digest]

    def check_canceled(self) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    @property
    def scratch_dir(self) -> str:
        raise AssertionError("the soci driver needs no scratch space")

    def note(self, message: str) -> None:
        self.notes.append(message)


def _layers() -> dict[str, bytes]:
    blobs = [EXAMPLES / "small-layer.tar.gz", DATA / "layers" / "layer-pax.tar.gz"]
    return {of_bytes(data): data for data in (path.read_bytes() for path in blobs)}


def _source(manifest: bytes) -> SourceImage:
    return SourceImage(
        reference="registry.example/soci/example:v1",
        manifest=Manifest.from_json(manifest),
        digest=of_bytes(manifest),
        config=ImageConfig.from_json(_example("image-config.json")),
        platform=PLATFORM,
    )


def _run(driver: SociDriver, image: SourceImage, ctx: _Blobs) -> ConvertedImage:
    """What the converter asks of a driver: every layer, then the image."""
    layers = [
        driver.convert_layer(layer, diff_id, ctx)
        for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=True)
    ]
    return driver.finish_image(image, layers, driver.image_layers(image, layers, ctx), ctx)


def _convert(manifest: bytes, **options: str) -> tuple[ConvertedImage, _Blobs]:
    ctx = _Blobs(_layers())
    return _run(SociDriver({**OPTIONS, **options}), _source(manifest), ctx), ctx


def test_v2_driver_output_is_soci_enabled_image_of_the_examples() -> None:
    converted, ctx = _convert(_example("image-manifest.json"))
    assert converted.manifest.to_bytes() == _example("image-manifest-soci-v2.json")
    [artifact] = converted.artifacts
    assert artifact.manifest.to_bytes() == _example("soci-index-v2.json")
    assert artifact.index_entry is not None
    # The converter lists the image, then its SOCI index: together they are soci's OCI index.
    image = soci.soci_enabled_index([(converted.manifest, PLATFORM)], [artifact.index_entry])
    assert image.to_json() == _example("oci-index-soci-v2.json")
    ztoc = artifact.manifest.layers[0]
    assert ctx.stored[ztoc.digest] == (DATA / "ztoc" / f"layer-pax.span{SPAN}.ztoc").read_bytes()
    assert ctx.stored[soci.EMPTY_CONFIG_DIGEST] == _example("empty-config.json")
    assert len(ctx.notes) == 1 and "less than min-layer-size 1000" in ctx.notes[0]


def test_v2_driver_manifest_and_entry_equal_formats_soci() -> None:
    source = _example("image-manifest.json")
    converted, _ = _convert(source)
    [artifact] = converted.artifacts
    index_digest = artifact.manifest.descriptor().digest
    expected = soci.convert_manifest(Manifest.from_json(source), index_digest)
    assert converted.manifest.to_bytes() == expected.to_json()
    assert artifact.index_entry == soci.soci_index_descriptor(
        artifact.manifest, version=2, platform=PLATFORM, image_manifest_digest=expected.descriptor().digest
    )


def test_v2_driver_drops_what_go_ocispec_does_not_model() -> None:
    """soci re-marshals descriptors through Go structs, so unknown descriptor fields do not survive; the
    driver once kept them, and its image then differed from soci's."""
    manifest: dict[str, Any] = json.loads(_example("image-manifest.json"))
    manifest["config"]["x-unknown"] = "config field"
    manifest["layers"][1]["x-unknown"] = "layer field"
    source = json.dumps(manifest).encode()
    converted, _ = _convert(source)
    out = json.loads(converted.manifest.to_bytes())
    assert "x-unknown" not in out["config"] and all("x-unknown" not in layer for layer in out["layers"])
    index_digest = converted.artifacts[0].manifest.descriptor().digest
    assert (
        converted.manifest.to_bytes()
        == soci.convert_manifest(Manifest.from_json(source), index_digest).to_json()
    )


def test_v1_driver_index_is_the_examples_v1_index() -> None:
    converted, _ = _convert(_example("image-manifest.json"), index_version="v1")
    assert converted.unchanged and converted.manifest.to_bytes() == _example("image-manifest.json")
    [artifact] = converted.artifacts
    assert artifact.index_entry is None
    assert artifact.manifest.to_bytes() == _example("soci-index-v1.json")
    listing = soci.referrers_index([soci.soci_index_descriptor(artifact.manifest, version=1)])
    assert listing.to_json() == _example("referrers-response-or-fallback-tag-index.json")


def test_v2_driver_keeps_the_converters_marks() -> None:
    image = _source(_example("image-manifest.json"))
    image.annotations = {"example.mark": "kept"}
    converted = _run(SociDriver(OPTIONS), image, _Blobs(_layers()))
    annotations = converted.manifest.annotations
    assert annotations["example.mark"] == "kept"
    assert annotations["com.amazon.soci.index-digest"] == converted.artifacts[0].manifest.descriptor().digest
