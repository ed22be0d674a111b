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
def source_image(registry_plain: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    image = build_rich_image(tmp_path_factory.mktemp("consumer-src"))
    ref = f"{registry_plain.host}/consumer/rich:v1"
    push_layout(image.layout, ref, tls_verify=False)
    return ref


@pytest.mark.parametrize(
    ("driver", "options"),
    [
        ("estargz", {}),
        ("estargz", {"compressor": "isal", "chunk_size": "65536"}),
        ("zstdchunked", {}),
        ("zstdchunked", {"flavour": "stargz"}),
        ("soci", {"min_layer_size": "0"}),
    ],
)
def test_converted_image_unpacks_to_the_source_tree(
    containerd: Containerd,
    registry_plain: RegistryServer,
    source_image: str,
    tmp_path: Path,
    driver: str,
    options: dict[str, str],
) -> None:
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
