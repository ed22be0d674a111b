"""Converted images are pulled lazily by the real stargz snapshotter and a container starts from them.

For each format: the pull mounts every layer as FUSE (a layer it had to download and unpack is a failure),
``ctr run`` prints what the source image prints, and the registry served under 10 % of the image's layer
bytes before that output. With ``prioritized_files`` the prioritized file arrives in the layer's prefetch
(one GET from offset 0 to the prefetch landmark) and is never fetched again, while the other files are
fetched on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from accel.converter import Converter
from accel.formats import estargz
from accel.oci import mediatypes as mt
from tests.interop.lazy.conftest import BIG_FILE, PRIORITIZED, SourceImage
from tests.support.configs import make_config
from tests.support.faultproxy import FaultProxy
from tests.support.lazypull import LazyStack, blob_bytes, fuse_mounts, requested_ranges, run_container
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.interop]


def _convert(registry: RegistryServer, work: Path, source: str, driver: str, options: dict[str, str]) -> str:
    config = make_config(
        work,
        {registry.host: registry.source()},
        driver=driver,
        driver_config=options,
        tag_suffix=f"-lazy-{driver}-{len(options)}",
    )
    with Converter(config) as converter:
        return converter.convert(source).target


def _layers(registry: RegistryServer, ref: str) -> list[dict[str, Any]]:
    name, _, tag = ref.partition("/")[2].rpartition(":")
    response = httpx.get(
        f"{registry.url}/v2/{name}/manifests/{tag}", headers={"Accept": mt.OCI_MANIFEST}, timeout=30
    )
    response.raise_for_status()
    layers: list[dict[str, Any]] = response.json()["layers"]
    return layers


def _blob(registry: RegistryServer, ref: str, digest: str) -> bytes:
    name = ref.partition("/")[2].rpartition(":")[0]
    response = httpx.get(f"{registry.url}/v2/{name}/blobs/{digest}", timeout=60)
    response.raise_for_status()
    return response.content


def _lazy_start(
    stack: LazyStack, proxy: FaultProxy, registry: RegistryServer, target: str, source: SourceImage
) -> tuple[list[dict[str, Any]], list[tuple[str, str, dict[str, str]]]]:
    """rpull + ctr run through the counting proxy; returns the layers and the requests made before the
    command's first output line."""
    layers = _layers(registry, target)
    proxied = target.replace(registry.host, proxy.host, 1)
    namespace = stack.namespace()
    before = {point for point, _ in fuse_mounts(stack.snapshotter_root)}
    proxy.clear()
    stack.rpull(proxied, namespace)

    # Every layer of this image became a FUSE mount of its own: a layer the snapshotter could not mount
    # would have been downloaded and unpacked by containerd instead. (Earlier tests' layers stay mounted.)
    new = [(point, kind) for point, kind in fuse_mounts(stack.snapshotter_root) if point not in before]
    assert len(new) == len(layers), (new, stack.logs())
    assert all(kind == "fuse.rawBridge" for _, kind in new), new

    def seen() -> list[tuple[str, str, dict[str, str]]]:
        return list(proxy.requests)

    run = run_container(stack.containerd, proxied, source.command, namespace=namespace, on_first_line=seen)
    assert run.output.splitlines() == source.expected
    assert isinstance(run.at_first_line, list)
    return layers, run.at_first_line


@pytest.mark.parametrize(
    ("driver", "options"),
    [("estargz", {}), ("zstdchunked", {"flavour": "stargz"})],
    ids=["estargz", "zstdchunked-stargz"],
)
def test_container_starts_lazily(
    lazy_stack: LazyStack,
    counting_proxy: FaultProxy,
    registry_plain: RegistryServer,
    lazy_source: SourceImage,
    tmp_path: Path,
    driver: str,
    options: dict[str, str],
) -> None:
    target = _convert(registry_plain, tmp_path / "work", lazy_source.ref, driver, options)
    layers, requests = _lazy_start(lazy_stack, counting_proxy, registry_plain, target, lazy_source)

    sizes = {layer["digest"]: layer["size"] for layer in layers}
    served = blob_bytes(requests, sizes)
    assert all(served[digest] < size for digest, size in sizes.items()), served
    # The command read a file from each layer, so each was reached (footer and TOC at least).
    assert all(count > 0 for count in served.values()), served
    assert sum(served.values()) < 0.10 * sum(sizes.values()), (served, sizes)


def test_prioritized_files_come_in_the_prefetch(
    lazy_stack: LazyStack,
    counting_proxy: FaultProxy,
    registry_plain: RegistryServer,
    lazy_source: SourceImage,
    tmp_path: Path,
) -> None:
    options = {"prioritized_files": PRIORITIZED}
    target = _convert(registry_plain, tmp_path / "work", lazy_source.ref, "estargz", options)
    layers, requests = _lazy_start(lazy_stack, counting_proxy, registry_plain, target, lazy_source)
    sizes = {layer["digest"]: layer["size"] for layer in layers}
    assert sum(blob_bytes(requests, sizes).values()) < 0.10 * sum(sizes.values())

    top = layers[-1]["digest"]
    entries = {e.name: e for e in estargz.open_blob(_blob(registry_plain, target, top)).entries}
    landmark = entries[estargz.PREFETCH_LANDMARK].offset
    prioritized = entries[PRIORITIZED].offset
    assert prioritized < landmark
    top_ranges = requested_ranges(requests, top, sizes[top])
    # The prefetch: one GET of the layer's start up to the landmark, holding the prioritized file.
    prefetches = [(lo, hi) for lo, hi in top_ranges if lo == 0 and hi >= landmark - 1]
    assert len(prefetches) == 1, top_ranges
    # The command read the prioritized file, yet nothing else fetched its bytes: it came from the prefetch.
    again = [r for r in top_ranges if r not in prefetches and r[0] < landmark and r[1] >= prioritized]
    assert not again, top_ranges
    # The files not prioritized came on demand: they lie past the big file that follows the landmark,
    # and ranges there were fetched.
    for name in ("etc/os-release", "lib/module.txt"):
        offset = entries[name].offset
        assert offset > landmark + BIG_FILE
        assert any(lo <= offset <= hi for lo, hi in top_ranges if lo >= landmark), (name, top_ranges)
