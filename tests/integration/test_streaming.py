"""A layer converts while it downloads, and a layer whose bytes do not verify converts into nothing."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from accel.converter import ConversionResult, Converter
from accel.drivers.base import ConvertedLayer, DriverContext
from accel.drivers.estargz import EStargzDriver
from accel.errors import DigestMismatchError
from accel.oci.manifest import Descriptor
from tests.support.configs import make_config
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.images import build_rich_image, build_simple_image, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration

MIB = 1 << 20


class _Watched:
    """A layer stream that tells when the driver has read ``threshold`` bytes of it."""

    def __init__(self, raw: BinaryIO, threshold: int, reached: threading.Event) -> None:
        self._raw, self._threshold, self._reached, self._read = raw, threshold, reached, 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._read += len(data)
        if self._read >= self._threshold:
            self._reached.set()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> _Watched:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._raw.__exit__(*exc)


class _WatchedContext:
    def __init__(self, ctx: DriverContext, threshold: int, reached: threading.Event) -> None:
        self._ctx, self._threshold, self._reached = ctx, threshold, reached

    def open_layer(self, layer: Descriptor) -> Any:
        return _Watched(self._ctx.open_layer(layer), self._threshold, self._reached)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


class WatchingEStargz(EStargzDriver):
    def __init__(self, threshold: int) -> None:
        super().__init__({})
        self.threshold = threshold
        self.reading = threading.Event()

    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[None]:
        watched: Any = _WatchedContext(ctx, self.threshold, self.reading)
        return super().convert_layer(layer, diff_id, watched)


def _image(registry: RegistryServer, tmp_path: Path, repo: str) -> Descriptor:
    # Random bytes do not compress: the layer blob is as big as the file.
    image = build_simple_image(tmp_path / "src", {"data/random": os.urandom(4 * MIB), "etc/name": b"big"})
    push_layout(image.layout, f"{registry.host}/{repo}:v1", tls_verify=False)
    return image.images[0].manifest.layers[0]


def test_a_layer_converts_while_its_bytes_arrive(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    repo = f"stream-{tmp_path.name.lower()}/app"
    layer = _image(registry_plain, tmp_path, repo)
    held = fault_proxy.hold("GET", rf"^/v2/{repo}/blobs/{layer.digest}$", after=2 * MIB)
    config = make_config(tmp_path / "work", {fault_proxy.host: registry_plain.source()}, tag_suffix="-esgz")
    driver = WatchingEStargz(threshold=MIB)
    outcome: list[ConversionResult | BaseException] = []

    def convert() -> None:
        try:
            with Converter(config, driver=driver) as converter:
                outcome.append(converter.convert(f"{fault_proxy.host}/{repo}:v1"))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=convert)
    worker.start()
    try:
        assert held.reached.wait(60), "the layer download never started"
        # Half of the layer is out and the rest is held back: the driver must already be reading, well
        # before the client's 30 s read timeout could make it fetch the rest with another request.
        assert driver.reading.wait(20), "the driver waited for the whole download"
        assert worker.is_alive() and not outcome
        assert fault_proxy.count("GET", rf"^/v2/{repo}/blobs/{layer.digest}$") == 1
    finally:
        held.release.set()
        worker.join(120)
    [result] = outcome
    assert isinstance(result, ConversionResult), result
    assert result.bytes_in == layer.size
    assert result.target_digest.startswith("sha256:")


def test_a_layer_that_does_not_verify_converts_into_nothing(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    repo = f"stream-{tmp_path.name.lower()}/app"
    layer = _image(registry_plain, tmp_path, repo)
    fault_proxy.corrupt("GET", rf"^/v2/{repo}/blobs/{layer.digest}$", times=10)
    config = make_config(tmp_path / "work", {fault_proxy.host: registry_plain.source()}, tag_suffix="-esgz")
    with Converter(config, driver=EStargzDriver({})) as converter:
        with pytest.raises(DigestMismatchError):
            converter.convert(f"{fault_proxy.host}/{repo}:v1")
        assert converter.client.head_manifest(fault_proxy.host, repo, "v1-esgz") is None
        assert not converter.store.has(layer.digest)


class UploadWatchingEStargz(EStargzDriver):
    """Converts its second layer only once the first converted blob's upload has reached the registry."""

    def __init__(self, upload: threading.Event, release: threading.Event) -> None:
        super().__init__({})
        self.upload, self.release = upload, release
        self.seen_while_converting: list[bool] = []

    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[None]:
        converted = super().convert_layer(layer, diff_id, ctx)
        if not self.seen_while_converting:
            self.seen_while_converting.append(False)
        else:
            # The bound is the test's patience: the old pipeline uploads nothing before every layer is done.
            self.seen_while_converting.append(self.upload.wait(20))
            self.release.set()
        return converted


def test_a_converted_layer_uploads_while_the_next_converts(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    repo = f"stream-{tmp_path.name.lower()}/app"
    image = build_rich_image(tmp_path / "src")  # three layers
    push_layout(image.layout, f"{registry_plain.host}/{repo}:v1", tls_verify=False)
    held = fault_proxy.hold("PUT", rf"^/v2/{repo}/blobs/uploads/", after=0)
    config = make_config(
        tmp_path / "work", {fault_proxy.host: registry_plain.source()}, tag_suffix="-esgz", worker=1
    )
    driver = UploadWatchingEStargz(held.reached, held.release)
    try:
        with Converter(config, driver=driver) as converter:
            result = converter.convert(f"{fault_proxy.host}/{repo}:v1")
    finally:
        held.release.set()
    assert driver.seen_while_converting == [False, True, True]
    assert result.timings["overlap"] > 0


class _HeldWriter:
    """A new blob's writer that, once ``threshold`` bytes are written, waits (bounded by the test's
    patience) for the registry to have answered a PATCH of the blob, records whether it had, and lets the
    held answer go."""

    def __init__(self, sink: Any, threshold: int, held: Fault, seen: list[bool]) -> None:
        self._sink, self._threshold, self._held, self._seen = sink, threshold, held, seen

    def write(self, data: Any) -> int:
        written: int = self._sink.write(data)
        if not self._seen and self._sink.tell() >= self._threshold:
            # The old pipeline sends nothing of a blob before its driver committed it.
            self._seen.append(self._held.reached.wait(20))
            self._held.release.set()
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)

    def __enter__(self) -> _HeldWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sink.__exit__(*exc)


class _HeldContext:
    def __init__(self, ctx: DriverContext, writer: Any) -> None:
        self._ctx, self._writer = ctx, writer

    def new_blob(self) -> Any:
        return self._writer(self._ctx.new_blob())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


class PatchWatchingEStargz(EStargzDriver):
    """Holds its blob's writing halfway until the registry has taken a PATCH of it."""

    def __init__(self, threshold: int, held: Fault) -> None:
        super().__init__({})
        self.threshold, self.held = threshold, held
        self.seen_while_writing: list[bool] = []

    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[None]:
        def writer(sink: Any) -> _HeldWriter:
            return _HeldWriter(sink, self.threshold, self.held, self.seen_while_writing)

        held: Any = _HeldContext(ctx, writer)
        return super().convert_layer(layer, diff_id, held)


def _pushed_layer(converter: Converter, host: str, repo: str, tag: str) -> Descriptor:
    manifest = json.loads(converter.client.get_manifest(host, repo, tag).data)
    [layer] = manifest["layers"]
    return Descriptor(layer["mediaType"], layer["digest"], layer["size"])


def test_a_new_blob_uploads_while_the_driver_still_writes_it(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    repo = f"stream-{tmp_path.name.lower()}/app"
    _image(registry_plain, tmp_path, repo)
    uploads = rf"^/v2/{repo}/blobs/uploads/."
    # Answered (the registry has the chunk), then held until the test lets it go.
    held = fault_proxy.hold("PATCH", uploads, after=0)
    registry = {"upload_chunk_size": 256 << 10}
    config = make_config(
        tmp_path / "work", {fault_proxy.host: registry_plain.source()}, tag_suffix="-esgz", registry=registry
    )
    driver = PatchWatchingEStargz(threshold=2 * MIB, held=held)
    try:
        with Converter(config, driver=driver) as converter:
            result = converter.convert(f"{fault_proxy.host}/{repo}:v1")
            pushed = _pushed_layer(converter, fault_proxy.host, repo, "v1-esgz")
            report = converter.check(f"{fault_proxy.host}/{repo}:v1-esgz")
            manifest = json.loads(converter.client.get_manifest(fault_proxy.host, repo, "v1-esgz").data)
    finally:
        held.release.set()
    assert driver.seen_while_writing == [True]
    # One session carried the blob: no second upload of it from the content store afterwards.
    assert fault_proxy.count("POST", rf"^/v2/{repo}/blobs/uploads/$") == 2  # the layer, the config
    assert fault_proxy.count("PATCH", uploads) == -(-pushed.size // (256 << 10)) + 1  # and the config's
    assert report.ok, report.failures
    # The upload ran while the conversion did, and the timings say so.
    assert result.timings["overlap"] > 0
    assert result.bytes_out == pushed.size + manifest["config"]["size"]


def test_a_registry_fault_midway_through_a_streamed_upload_still_pushes_the_image(
    registry_plain: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = f"stream-{tmp_path.name.lower()}/app"
    _image(registry_plain, tmp_path, repo)
    uploads = rf"^/v2/{repo}/blobs/uploads/."
    failed = fault_proxy.fail("PATCH", uploads, status=500, times=1, skip=1)  # the second chunk
    caplog.set_level(logging.INFO, logger="accel.converter.uploads")
    registry = {"upload_chunk_size": 256 << 10}
    config = make_config(
        tmp_path / "work", {fault_proxy.host: registry_plain.source()}, tag_suffix="-esgz", registry=registry
    )
    with Converter(config, driver=EStargzDriver({})) as converter:
        result = converter.convert(f"{fault_proxy.host}/{repo}:v1")
        pushed = _pushed_layer(converter, fault_proxy.host, repo, "v1-esgz")
        report = converter.check(f"{fault_proxy.host}/{repo}:v1-esgz")
        tagged = converter.client.head_manifest(fault_proxy.host, repo, "v1-esgz")
    assert failed.hits == 1, "the streamed upload never reached its second chunk"
    assert "streamed upload dropped" in caplog.text
    assert report.ok, report.failures
    assert tagged is not None and tagged.digest == result.target_digest
    # The layer went up twice: the dropped stream's first chunk, then the whole blob from the store.
    assert fault_proxy.count("PATCH", uploads) > -(-pushed.size // (256 << 10))


class RewindingEStargz(EStargzDriver):
    """Writes bytes that are not the blob first, lets their PATCH reach the registry, then rewinds its blob
    (as the eStargz builder does when a path appears twice) and writes the real one."""

    def __init__(self, held: Fault) -> None:
        super().__init__({})
        self.held = held

    def convert_layer(self, layer: Descriptor, diff_id: str, ctx: DriverContext) -> ConvertedLayer[None]:
        def writer(sink: Any) -> Any:
            sink.write(os.urandom(512 << 10))
            assert self.held.reached.wait(20), "the first bytes were never sent"
            self.held.release.set()
            sink.seek(0)
            sink.truncate()
            return sink

        rewinding: Any = _HeldContext(ctx, writer)
        return super().convert_layer(layer, diff_id, rewinding)


def test_a_blob_rewound_while_it_streams_is_pushed_whole(
    registry_plain: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = f"stream-{tmp_path.name.lower()}/app"
    _image(registry_plain, tmp_path, repo)
    held = fault_proxy.hold("PATCH", rf"^/v2/{repo}/blobs/uploads/.", after=0)
    caplog.set_level(logging.INFO, logger="accel.converter.uploads")
    registry = {"upload_chunk_size": 256 << 10}
    config = make_config(
        tmp_path / "work", {fault_proxy.host: registry_plain.source()}, tag_suffix="-esgz", registry=registry
    )
    try:
        with Converter(config, driver=RewindingEStargz(held)) as converter:
            converter.convert(f"{fault_proxy.host}/{repo}:v1")
            report = converter.check(f"{fault_proxy.host}/{repo}:v1-esgz")
    finally:
        held.release.set()
    assert "restarted while it uploaded" in caplog.text
    assert report.ok, report.failures


def test_streamed_uploads_authenticate_with_bearer_tokens(
    registry_token: RegistryServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = build_simple_image(tmp_path / "src", {"data/random": os.urandom(2 * MIB), "etc/name": b"tok"})
    caplog.set_level(logging.INFO, logger="accel.converter.uploads")
    config = make_config(
        tmp_path / "work",
        {registry_token.host: registry_token.source()},
        tag_suffix="-esgz",
        registry={"upload_chunk_size": 256 << 10},
    )
    target = f"{registry_token.host}/stream-{tmp_path.name.lower()}/tok:v1"
    with Converter(config, driver=EStargzDriver({})) as converter:
        converter.convert(f"oci:{image.layout}:latest", target=target)
        report = converter.check(target)
    assert "streamed upload dropped" not in caplog.text, "the session's PATCHes and PUT must authenticate"
    assert report.ok, report.failures
