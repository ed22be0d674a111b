"""The converted-layer cache against the real registry: shared layers are mounted, not converted again."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from accel.config import Config
from accel.content import ContentStore
from accel.converter import ConversionResult, Converter
from accel.oci.manifest import Manifest, parse_manifest
from tests.support.configs import make_config
from tests.support.faultproxy import FaultProxy
from tests.support.images import build_rich_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration

SOURCE_BLOB_GET = r"^/v2/cache/[ab]/blobs/sha256:"


def _images(registry: RegistryServer, tmp_path: Path, repo: str = "cache") -> tuple[list[str], list[str]]:
    """Two images sharing their first and last layers, as ``<repo>/a:v1`` and ``<repo>/b:v1``; returns
    their layer digests."""
    a = build_rich_image(tmp_path / "a", payload_size=0)
    b = build_rich_image(tmp_path / "b", payload_size=256 << 10)
    push_layout(a.layout, f"{registry.host}/{repo}/a:v1", tls_verify=False)
    push_layout(b.layout, f"{registry.host}/{repo}/b:v1", tls_verify=False)
    layers_a = [layer.digest for layer in a.images[0].layers]
    layers_b = [layer.digest for layer in b.images[0].layers]
    assert layers_a[0] == layers_b[0] and layers_a[2] == layers_b[2] and layers_a[1] != layers_b[1]
    return layers_a, layers_b


def _convert(config: Config, source: str, target: str | None = None) -> ConversionResult:
    with Converter(config) as converter:
        return converter.convert(source, target=target)


def _manifest(converter_config: Config, host: str, repo: str, tag: str) -> Manifest:
    with Converter(converter_config) as converter:
        fetched = converter.client.get_manifest(host, repo, tag)
    document = parse_manifest(fetched.data, fetched.media_type)
    assert isinstance(document, Manifest)
    return document


def test_second_image_converts_only_its_own_layers(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    _, layers_b = _images(registry_plain, tmp_path)
    sources = {fault_proxy.host: registry_plain.source()}
    config = make_config(tmp_path / "work", sources, driver="estargz", tag_suffix="-esgz")

    first = _convert(config, f"{fault_proxy.host}/cache/a:v1")
    assert (first.cache_hits, first.cache_misses) == (0, 3)
    # A fresh content store: whatever the second conversion needs must come from the registry.
    ContentStore.for_work_dir(tmp_path / "work").gc(0)
    fault_proxy.clear()
    second = _convert(config, f"{fault_proxy.host}/cache/b:v1")

    assert (second.cache_hits, second.cache_misses) == (2, 1)
    source_gets = [path for method, path, _ in fault_proxy.requests if method == "GET" and "/blobs/" in path]
    pulled_layers = {path.rsplit("/", 1)[1] for path in source_gets} & set(layers_b)
    assert pulled_layers == {layers_b[1]}, "only the layer the images do not share is downloaded"

    uncached = make_config(
        tmp_path / "nocache", sources, driver="estargz", tag_suffix="-esgz", provider__cache_size=0
    )
    plain = _convert(uncached, f"{fault_proxy.host}/cache/b:v1", target=f"{fault_proxy.host}/cache/b:nocache")
    assert (plain.cache_hits, plain.cache_misses) == (0, 0)
    assert plain.target_digest == second.target_digest, "the cache changes nothing in the output"


def test_vanished_cached_blob_is_converted_again(registry_plain: RegistryServer, tmp_path: Path) -> None:
    _images(registry_plain, tmp_path)
    config = make_config(
        tmp_path / "work",
        {registry_plain.host: registry_plain.source()},
        driver="estargz",
        tag_suffix="-esgz",
    )
    first = _convert(config, f"{registry_plain.host}/cache/a:v1")
    target = _manifest(config, registry_plain.host, "cache/a", "v1-esgz")
    base_blob = target.layers[0].digest
    # The registry loses the converted base layer, and so does our local store.
    response = httpx.delete(f"{registry_plain.url}/v2/cache/a/blobs/{base_blob}")
    assert response.status_code == 202
    ContentStore.for_work_dir(tmp_path / "work").gc(0)

    again = _convert(
        config, f"{registry_plain.host}/cache/a:v1", target=f"{registry_plain.host}/cache/a:again"
    )

    assert again.cache_misses >= 1 and again.cache_hits == 2
    assert again.target_digest == first.target_digest
    with Converter(config) as converter:
        assert converter.client.blob_exists(registry_plain.host, "cache/a", base_blob)


def test_different_options_never_share_entries(registry_plain: RegistryServer, tmp_path: Path) -> None:
    _images(registry_plain, tmp_path)
    sources = {registry_plain.host: registry_plain.source()}
    work = tmp_path / "work"
    small = make_config(
        work, sources, driver="estargz", driver_config={"chunk_size": "65536"}, tag_suffix="-s"
    )
    default = make_config(work, sources, driver="estargz", tag_suffix="-d")
    first = _convert(small, f"{registry_plain.host}/cache/a:v1")
    second = _convert(default, f"{registry_plain.host}/cache/a:v1")
    third = _convert(default, f"{registry_plain.host}/cache/a:v1", target=f"{registry_plain.host}/cache/a:d2")
    assert (first.cache_hits, second.cache_hits, third.cache_hits) == (0, 0, 3)
    assert first.target_digest != second.target_digest


def test_nydus_layers_come_back_from_the_cache_with_their_bootstrap(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    _images(registry_plain, tmp_path)
    sources = {registry_plain.host: registry_plain.source()}
    config = make_config(tmp_path / "work", sources, driver="nydus", tag_suffix="-nydus")
    _convert(config, f"{registry_plain.host}/cache/a:v1")
    cached = _convert(config, f"{registry_plain.host}/cache/b:v1")
    uncached_config = make_config(
        tmp_path / "w2", sources, driver="nydus", tag_suffix="-nydus", provider__cache_size=0
    )
    plain = _convert(
        uncached_config, f"{registry_plain.host}/cache/b:v1", target=f"{registry_plain.host}/cache/b:n2"
    )
    assert cached.cache_hits == 2
    assert cached.target_digest == plain.target_digest


def test_remote_cache_image_is_shared_between_instances(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Two instances with separate work_dirs share converted layers through `<repo>:<cache_tag>`."""
    a = build_rich_image(tmp_path / "a", payload_size=0)
    push_layout(a.layout, f"{registry_plain.host}/remote/app:a", tls_verify=False)
    b = build_rich_image(tmp_path / "b", payload_size=256 << 10)
    push_layout(b.layout, f"{registry_plain.host}/remote/app:b", tls_verify=False)
    sources = {fault_proxy.host: registry_plain.source()}
    options = {
        "driver": "nydus",
        "tag_suffix": "-nydus",
        "cache_tag": "nydus-cache",
        "provider__cache_version": "v1",
    }
    first = make_config(tmp_path / "instance1", sources, **options)
    second = make_config(tmp_path / "instance2", sources, **options)

    _convert(first, f"{fault_proxy.host}/remote/app:a")
    fault_proxy.clear()
    shared = _convert(second, f"{fault_proxy.host}/remote/app:b")

    assert (shared.cache_hits, shared.cache_misses) == (2, 1)
    layer_gets = {
        path.rsplit("/", 1)[1]
        for method, path, _ in fault_proxy.requests
        if method == "GET" and "/blobs/" in path
    }
    assert layer_gets & {layer.digest for layer in b.images[0].layers} == {b.images[0].layers[1].digest}
    plain = _convert(
        make_config(tmp_path / "plain", sources, driver="nydus", tag_suffix="-nydus", provider__cache_size=0),
        f"{fault_proxy.host}/remote/app:b",
        target=f"{fault_proxy.host}/remote/app:b-plain",
    )
    assert plain.target_digest == shared.target_digest

    with Converter(first) as converter:
        index = parse_manifest(
            converter.client.get_manifest(fault_proxy.host, "remote/app", "nydus-cache").data
        )
        assert not isinstance(index, Manifest)
        assert [str(entry.platform) for entry in index.manifests] == ["linux/amd64"]
        records = Manifest.from_json(
            converter.client.get_manifest(fault_proxy.host, "remote/app", index.manifests[0].digest).data
        )
        inspection = converter.inspect(f"{fault_proxy.host}/remote/app:nydus-cache")
    assert records.annotations["containerd.io/snapshot/nydus-cache-version"] == "v1"
    sources_recorded = [
        layer.annotations["containerd.io/snapshot/nydus-source-digest"] for layer in records.layers
    ]
    assert len(sources_recorded) == 4 and len(set(sources_recorded)) == 4, (
        "b's three layers first, then a's own"
    )
    assert inspection.converted_by_us is not None


def test_reconverting_an_image_reuses_its_merged_bootstrap(
    registry_plain: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _images(registry_plain, tmp_path)
    config = make_config(
        tmp_path / "work", {registry_plain.host: registry_plain.source()}, driver="nydus", tag_suffix="-n"
    )
    first = _convert(config, f"{registry_plain.host}/cache/a:v1")

    def no_merge(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("the merged bootstrap should come from the cache")

    monkeypatch.setattr("accel.drivers.nydus.nydus.merge", no_merge)
    again = _convert(
        config, f"{registry_plain.host}/cache/a:v1", target=f"{registry_plain.host}/cache/a:again-nydus"
    )
    assert again.target_digest == first.target_digest
    assert (again.cache_hits, again.cache_misses) == (3, 0)


def test_cached_layers_are_mounted_even_when_the_store_still_has_them(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # Repositories of this test's own: no earlier test has put converted blobs there.
    repo = f"mounted-{tmp_path.name.lower()}"
    _images(registry_plain, tmp_path, repo)
    config = make_config(
        tmp_path / "work", {fault_proxy.host: registry_plain.source()}, driver="estargz", tag_suffix="-esgz"
    )
    _convert(config, f"{fault_proxy.host}/{repo}/a:v1")
    fault_proxy.clear()
    second = _convert(config, f"{fault_proxy.host}/{repo}/b:v1")
    assert second.cache_hits == 2
    # Only b's own converted layer and its config are uploaded; the shared ones are mounted from a.
    assert fault_proxy.count("PUT", rf"^/v2/{repo}/b/blobs/uploads/") == 2
