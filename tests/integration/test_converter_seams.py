"""The converter's seams against the real registry: it owns the layer cache, resolves a source once, and
never moves a tag it did not make."""

from __future__ import annotations

from pathlib import Path

import pytest

from accel.converter import Converter
from accel.drivers.base import ConvertedLayer, DriverContext
from accel.drivers.estargz import EStargzDriver
from accel.errors import ConversionError
from accel.oci import annotations as keys
from accel.oci.manifest import Descriptor, Manifest, parse_manifest
from accel.tasks import SQLiteTaskStore, TaskEngine, TaskStatus
from tests.support.configs import make_config
from tests.support.images import build_simple_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration


class CountingEStargz(EStargzDriver):
    """The real eStargz driver, counting the layers it is asked to convert."""

    def __init__(self) -> None:
        super().__init__({})
        self.converted: list[str] = []

    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[None]:
        self.converted.append(layer.digest)
        return super().convert_layer(layer, diff_id, ctx)


def _push(registry: RegistryServer, tmp_path: Path, name: str, ref: str, content: bytes) -> tuple[str, str]:
    """Push a one-layer image; returns its manifest digest and its layer digest."""
    image = build_simple_image(tmp_path / name, {"app/data": content})
    digest = push_layout(image.layout, f"{registry.host}/{ref}", tls_verify=False)
    return digest, image.images[0].manifest.layers[0].digest


def _manifest(converter: Converter, ref: str) -> Manifest:
    host, _, rest = ref.partition("/")
    repository, _, tag = rest.rpartition(":")
    fetched = converter.client.get_manifest(host, repository, tag)
    document = parse_manifest(fetched.data, fetched.media_type)
    assert isinstance(document, Manifest)
    return document


def test_a_cache_hit_never_calls_the_drivers_layer_conversion(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    repo = f"seams-{tmp_path.name.lower()}"
    _, layer = _push(registry_plain, tmp_path, "a", f"{repo}/a:v1", b"cached layer " * 1000)
    config = make_config(tmp_path / "work", {registry_plain.host: registry_plain.source()}, tag_suffix="-e")
    driver = CountingEStargz()
    with Converter(config, driver=driver) as converter:
        first = converter.convert(f"{registry_plain.host}/{repo}/a:v1")
        assert driver.converted == [layer]
        again = converter.convert(
            f"{registry_plain.host}/{repo}/a:v1", target=f"{registry_plain.host}/{repo}/a:v2"
        )
        assert driver.converted == [layer], "a cached layer must not reach the driver"
        assert (first.cache_hits, first.cache_misses, again.cache_hits, again.cache_misses) == (0, 1, 1, 0)
        assert _manifest(converter, again.target).layers == _manifest(converter, first.target).layers


def test_a_moved_tag_is_converted_at_the_inspected_digest(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    repo = f"seams-{tmp_path.name.lower()}"
    source = f"{registry_plain.host}/{repo}/app:v1"
    first, first_layer = _push(registry_plain, tmp_path, "first", f"{repo}/app:v1", b"first push")
    config = make_config(tmp_path / "work", {registry_plain.host: registry_plain.source()})
    with Converter(config) as converter:
        inspection = converter.inspect(source)
        moved, _ = _push(registry_plain, tmp_path, "second", f"{repo}/app:v1", b"second push")
        assert moved != first
        result = converter.convert(inspection.resolved, target=inspection.target)
        assert inspection.digest == result.source_digest == first
        converted = _manifest(converter, result.target)
    assert converted.annotations[keys.SOURCE_DIGEST] == first
    assert [layer.digest for layer in converted.layers] == [first_layer]


def test_a_task_converts_the_digest_its_webhook_named(registry_plain: RegistryServer, tmp_path: Path) -> None:
    repo = f"seams-{tmp_path.name.lower()}"
    source = f"{registry_plain.host}/{repo}/app:v1"
    pushed, pushed_layer = _push(registry_plain, tmp_path, "first", f"{repo}/app:v1", b"named by the webhook")
    # The tag moves before any worker runs: the task must still convert what the webhook named.
    _push(registry_plain, tmp_path, "second", f"{repo}/app:v1", b"pushed later")
    config = make_config(tmp_path / "work", {registry_plain.host: registry_plain.source()})
    converter = Converter(config)
    engine = TaskEngine(SQLiteTaskStore(tmp_path / "tasks.db"), converter, workers=1)
    engine.start()
    try:
        task_id = engine.submit(source, digest=pushed).task.id
        [task] = engine.wait([task_id], 60)
        assert task.status is TaskStatus.COMPLETED, task.reason
        assert task.source_digest == pushed
        converted = _manifest(converter, task.target)
    finally:
        engine.shutdown(grace=5)
        converter.close()
    assert converted.annotations[keys.SOURCE_DIGEST] == pushed
    assert [layer.digest for layer in converted.layers] == [pushed_layer]


def test_a_tag_we_did_not_make_is_never_overwritten(registry_plain: RegistryServer, tmp_path: Path) -> None:
    repo = f"seams-{tmp_path.name.lower()}"
    source = f"{registry_plain.host}/{repo}/app:v1"
    _push(registry_plain, tmp_path, "src", f"{repo}/app:v1", b"the source")
    foreign, _ = _push(registry_plain, tmp_path, "foreign", f"{repo}/app:v1-oci", b"someone else's image")
    sources = {registry_plain.host: registry_plain.source()}
    with Converter(make_config(tmp_path / "work", sources)) as converter:
        with pytest.raises(ConversionError) as refused:
            converter.convert(source)
        message = refused.value.message
        assert f"{repo}/app:v1-oci" in message and foreign in message
        assert "not made by acceleration-service" in message and "converter.overwrite" in message
        assert converter.client.get_manifest(registry_plain.host, f"{repo}/app", "v1-oci").digest == foreign

    forced = make_config(tmp_path / "work", sources, converter__overwrite=True)
    with Converter(forced) as converter:
        replaced = converter.convert(source)
    assert replaced.target_digest != foreign

    # Our own conversion of the same source with the same driver is ours to replace, even at a new digest.
    again = _push(registry_plain, tmp_path, "src2", f"{repo}/app:v1", b"the source, pushed again")[0]
    with Converter(make_config(tmp_path / "work", sources)) as converter:
        updated = converter.convert(source)
    assert updated.source_digest == again and updated.target_digest != replaced.target_digest

    # Another driver's output is not: the message says what the tag holds.
    estargz = make_config(tmp_path / "work", sources, driver="estargz", tag_suffix="-oci")
    with Converter(estargz) as converter, pytest.raises(ConversionError, match="made by the oci driver from"):
        converter.convert(source)


def test_a_platform_the_source_lacks_is_an_error_naming_what_it_has(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    repo = f"seams-{tmp_path.name.lower()}"
    _push(registry_plain, tmp_path, "amd64", f"{repo}/app:v1", b"amd64 only")
    config = make_config(
        tmp_path / "work", {registry_plain.host: registry_plain.source()}, platforms="linux/arm64"
    )
    with Converter(config) as converter:
        with pytest.raises(ConversionError, match=r"single-platform image \(linux/amd64\).*linux/arm64"):
            converter.convert(f"{registry_plain.host}/{repo}/app:v1")
        assert converter.client.head_manifest(registry_plain.host, f"{repo}/app", "v1-oci") is None


def test_a_task_fails_rather_than_overwrite_a_foreign_tag(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    repo = f"seams-{tmp_path.name.lower()}"
    _push(registry_plain, tmp_path, "src", f"{repo}/app:v1", b"the source")
    foreign, _ = _push(registry_plain, tmp_path, "foreign", f"{repo}/app:v1-oci", b"someone else's image")
    converter = Converter(make_config(tmp_path / "work", {registry_plain.host: registry_plain.source()}))
    engine = TaskEngine(SQLiteTaskStore(tmp_path / "tasks.db"), converter, workers=1)
    engine.start()
    try:
        task_id = engine.submit(f"{registry_plain.host}/{repo}/app:v1").task.id
        [task] = engine.wait([task_id], 60)
        assert converter.client.get_manifest(registry_plain.host, f"{repo}/app", "v1-oci").digest == foreign
    finally:
        engine.shutdown(grace=5)
        converter.close()
    assert task.status is TaskStatus.FAILED
    assert f"target {registry_plain.host}/{repo}/app:v1-oci exists and holds {foreign}" in task.reason
    assert task.attempts == 1, "a foreign tag is not a transient error"
