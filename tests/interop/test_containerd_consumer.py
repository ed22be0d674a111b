"""A real consumer: containerd pulls our converted images from the test registry and unpacks them.

The unpacked tree of the converted image must equal the unpacked tree of the source image, both made by
containerd itself (whiteouts, opaque directories, hardlinks, xattrs, devices, fifos, modes, owners).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from accel.converter import Converter
from accel.formats import estargz
from tests.support.configs import make_config
from tests.support.containerd import Containerd, containerd_available, snapshot_tree, start_containerd
from tests.support.images import build_rich_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.interop]


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    if not containerd_available():
        pytest.skip("containerd is not installed (apt-get install containerd)")
    try:
        daemon = start_containerd(tmp_path_factory.mktemp("containerd"))
    except RuntimeError as exc:
        pytest.skip(f"containerd cannot start here: {exc}")
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(scope="module")
def source_images(
    registry_plain: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[bool, str]:
    """The edge-case image with and without a path written twice in one layer."""
    refs = {}
    for duplicate in (True, False):
        image = build_rich_image(tmp_path_factory.mktemp("consumer-src"), duplicate=duplicate)
        refs[duplicate] = f"{registry_plain.host}/consumer/rich:{'dup' if duplicate else 'unique'}"
        push_layout(image.layout, refs[duplicate], tls_verify=False)
    return refs


@pytest.mark.parametrize(
    ("driver", "options", "duplicate"),
    [
        ("estargz", {}, True),
        ("estargz", {"compressor": "isal", "chunk_size": "65536"}, True),
        # containers/storage refuses a TOC naming a path twice, so that flavour gets the other image.
        ("zstdchunked", {}, False),
        ("zstdchunked", {"flavour": "stargz"}, True),
        ("soci", {"min_layer_size": "0"}, True),
    ],
)
def test_converted_image_unpacks_to_the_source_tree(
    containerd: Containerd,
    registry_plain: RegistryServer,
    source_images: dict[bool, str],
    tmp_path: Path,
    driver: str,
    options: dict[str, str],
    duplicate: bool,
) -> None:
    source_image = source_images[duplicate]
    config = make_config(
        tmp_path / "work",
        {registry_plain.host: registry_plain.source()},
        driver=driver,
        driver_config=options,
        tag_suffix=f"-{driver}-{len(options)}",
    )
    with Converter(config) as converter:
        result = converter.convert(source_image)

    expected = snapshot_tree(containerd.unpack(source_image))
    unpacked = snapshot_tree(containerd.unpack(result.target))
    # A plain unpack of an eStargz layer shows its own files too (the stargz snapshotter hides them).
    for name in (estargz.TOC_NAME, estargz.PREFETCH_LANDMARK, estargz.NO_PREFETCH_LANDMARK):
        unpacked.pop(name, None)

    assert "dev/fifo" in expected or any(node.kind == "fifo" for node in expected.values())
    assert set(unpacked) == set(expected)
    different = {
        path: (expected[path], unpacked[path]) for path in expected if unpacked[path] != expected[path]
    }
    assert not different
