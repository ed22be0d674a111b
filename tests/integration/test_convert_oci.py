"""The pipeline end to end with the ``oci`` driver, on the real registry in every mode and on OCI layouts.

What we push is read back with skopeo, an independent client: it must find a well-formed OCI image
whose every blob exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from accel.converter import Converter
from accel.errors import ConversionError, DigestMismatchError, NotFoundError, UnauthorizedError
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.layout import OCILayout
from accel.oci.manifest import Index, Manifest, parse_manifest
from tests.support.configs import make_config, write_config
from tests.support.faultproxy import FaultProxy
from tests.support.images import build_docker_image, build_multiplatform_image, build_rich_image, push_layout
from tests.support.registry import PULL_USER, RegistryServer

pytestmark = pytest.mark.integration


def skopeo_inspect(server: RegistryServer, ref: str) -> dict[str, object]:
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", *server.skopeo_args(""), f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    raw: dict[str, object] = json.loads(proc.stdout)
    return raw


def skopeo_copy_out(server: RegistryServer, ref: str, dest: Path) -> None:
    """Copy every platform of ``ref`` out of the registry: fails if any referenced blob is missing."""
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--all",
            *server.skopeo_args("src"),
            f"docker://{ref}",
            f"oci:{dest}:x",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def test_docker_image_becomes_oci_in_every_registry_mode(registry: RegistryServer, tmp_path: Path) -> None:
    image = build_docker_image(tmp_path / "src")
    source = f"{registry.host}/oci-e2e/rich:v1"
    source_digest = push_layout(image.layout, source, format=None, **_skopeo_push(registry))
    config = make_config(tmp_path / "work", {registry.host: registry.source()})

    with Converter(config) as converter:
        result = converter.convert(source)

    assert result.target == f"{registry.host}/oci-e2e/rich:v1-oci"
    assert result.source_digest == source_digest
    assert result.bytes_in == 0, "the oci driver must not download layers"
    pushed = skopeo_inspect(registry, result.target)
    source_manifest = image.images[0].manifest
    assert pushed["mediaType"] == mt.OCI_MANIFEST
    layers = pushed["layers"]
    assert isinstance(layers, list)
    assert [layer["digest"] for layer in layers] == [layer.digest for layer in source_manifest.layers]
    assert {layer["mediaType"] for layer in layers} == {mt.OCI_LAYER_GZIP}
    annotations = pushed["annotations"]
    assert isinstance(annotations, dict)
    assert annotations[keys.SOURCE_DIGEST] == source_digest
    assert annotations[keys.DRIVER_NAME] == "oci"
    skopeo_copy_out(registry, result.target, tmp_path / "out")
    assert result.target_digest == OCILayout(tmp_path / "out").resolve("x").digest or result.target_digest


def test_cross_repository_layers_are_mounted_not_uploaded(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    image = build_docker_image(tmp_path / "src")
    push_layout(image.layout, f"{registry_plain.host}/mount/src:v1", format=None, tls_verify=False)
    config = make_config(tmp_path / "work", {fault_proxy.host: registry_plain.source()})
    with Converter(config) as converter:
        result = converter.convert(
            f"{fault_proxy.host}/mount/src:v1", target=f"{fault_proxy.host}/mount/dst:v1"
        )
    assert result.bytes_in == 0 and result.bytes_out == 0
    # Three layers and the config, each by one mount POST and no upload.
    assert fault_proxy.count("POST", r"^/v2/mount/dst/blobs/uploads/$") == 4
    assert fault_proxy.count("PATCH", "/blobs/uploads/") == 0
    assert fault_proxy.count("PUT", "/blobs/uploads/") == 0
    assert fault_proxy.count("GET", r"/blobs/sha256:") == 1, "only the config is read"
    skopeo_copy_out(registry_plain, f"{registry_plain.host}/mount/dst:v1", tmp_path / "out")


def test_multiplatform_index_keeps_its_structure_and_honours_platforms(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    image = build_multiplatform_image(tmp_path / "src", media="docker")
    source = f"{registry_plain.host}/oci-e2e/multi:v1"
    push_layout(image.layout, source, format=None, tls_verify=False)
    sources = {registry_plain.host: registry_plain.source()}

    with Converter(make_config(tmp_path / "w1", sources)) as converter:
        every = converter.convert(source)
    index = skopeo_inspect(registry_plain, every.target)
    assert index["mediaType"] == mt.OCI_INDEX
    entries = index["manifests"]
    assert isinstance(entries, list)
    assert [(e["platform"]["os"], e["platform"]["architecture"]) for e in entries] == [
        ("linux", "amd64"),
        ("linux", "arm64"),
    ]
    assert all(e["mediaType"] == mt.OCI_MANIFEST for e in entries)
    assert sorted(every.platforms) == ["linux/amd64", "linux/arm64/v8"]
    skopeo_copy_out(registry_plain, every.target, tmp_path / "out-all")

    config = make_config(tmp_path / "w2", sources, platforms="linux/arm64", tag_suffix="-arm")
    with Converter(config) as converter:
        arm = converter.convert(source)
    entries = skopeo_inspect(registry_plain, arm.target)["manifests"]
    assert isinstance(entries, list)
    assert [e["platform"]["architecture"] for e in entries] == ["arm64"]


def test_layout_to_layout_needs_no_registry(tmp_path: Path) -> None:
    image = build_multiplatform_image(tmp_path / "src", media="docker")
    config = make_config(tmp_path / "work", {})
    with Converter(config) as converter:
        result = converter.convert(image.ref, target=f"oci:{tmp_path / 'dst'}:converted")
    layout = OCILayout(tmp_path / "dst")
    top = layout.read_document(layout.resolve("converted"))
    assert isinstance(top, Index)
    assert result.target_digest == layout.resolve("converted").digest
    for entry in top.manifests:
        child = layout.read_document(entry)
        assert isinstance(child, Manifest)
        for blob in [child.config, *child.layers]:
            assert layout.has_blob(blob.digest)
    subprocess.run(
        ["skopeo", "inspect", f"oci:{tmp_path / 'dst'}:converted"], check=True, capture_output=True
    )


def test_layout_source_to_registry_uploads_layers(registry_token: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src")
    config = make_config(tmp_path / "work", {registry_token.host: registry_token.source()})
    target = f"{registry_token.host}/from-layout/rich:v1"
    with Converter(config) as converter:
        result = converter.convert(image.ref, target=target)
    assert result.bytes_out >= sum(layer.size for layer in image.images[0].layers)
    skopeo_copy_out(registry_token, target, tmp_path / "out")


def test_wrong_credentials_fail_with_a_clear_error(registry_tls: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src")
    source = f"{registry_tls.host}/creds/rich:v1"
    push_layout(image.layout, source, **_skopeo_push(registry_tls))
    config = make_config(
        tmp_path / "work", {registry_tls.host: registry_tls.source(password="wrong-password")}
    )
    with Converter(config) as converter, pytest.raises(UnauthorizedError) as err:
        converter.convert(source)
    assert "wrong-password" not in str(err.value)
    assert registry_tls.host in str(err.value)


def test_pull_only_user_cannot_push_the_target(registry_token: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src")
    source = f"{registry_token.host}/scoped/rich:v1"
    push_layout(image.layout, source, **_skopeo_push(registry_token))
    config = make_config(tmp_path / "work", {registry_token.host: registry_token.source(user=PULL_USER[0])})
    with Converter(config) as converter, pytest.raises(UnauthorizedError) as err:
        converter.convert(source)
    assert "insufficient_scope" in str(err.value) or "push" in str(err.value)
    with pytest.raises(subprocess.CalledProcessError):
        skopeo_inspect(registry_token, f"{registry_token.host}/scoped/rich:v1-oci")


def test_manifest_that_does_not_match_its_digest_is_rejected(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    image = build_rich_image(tmp_path / "src")
    digest = push_layout(image.layout, f"{registry_plain.host}/corrupt/rich:v1", tls_verify=False)
    fault_proxy.corrupt("GET", "/manifests/", times=1)
    config = make_config(tmp_path / "work", {fault_proxy.host: registry_plain.source()})
    with Converter(config) as converter, pytest.raises(DigestMismatchError) as err:
        converter.convert(
            f"{fault_proxy.host}/corrupt/rich@{digest}", target=f"{fault_proxy.host}/corrupt/rich:out"
        )
    assert "digest" in str(err.value)


def test_unknown_platform_selection_fails_clearly(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_multiplatform_image(tmp_path / "src")
    source = f"{registry_plain.host}/oci-e2e/noplat:v1"
    push_layout(image.layout, source, tls_verify=False)
    config = make_config(
        tmp_path / "work", {registry_plain.host: registry_plain.source()}, platforms="linux/s390x"
    )
    with Converter(config) as converter, pytest.raises(ConversionError) as err:
        converter.convert(source)
    assert "linux/s390x" in str(err.value) and "linux/amd64" in str(err.value)


def test_inspect_recognises_our_output_and_an_existing_target(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    image = build_docker_image(tmp_path / "src")
    source = f"{registry_plain.host}/inspect/rich:v1"
    push_layout(image.layout, source, format=None, tls_verify=False)
    config = make_config(tmp_path / "work", {registry_plain.host: registry_plain.source()})
    with Converter(config) as converter:
        before = converter.inspect(source)
        assert before.converted_by_us is None and before.existing_target_digest is None
        result = converter.convert(source)
        after = converter.inspect(source)
        assert after.existing_target_digest == result.target_digest
        ours = converter.inspect(result.target)
        assert ours.converted_by_us is not None and "already converted" in ours.converted_by_us


def test_conversion_killed_during_push_leaves_no_target_tag(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    image = build_rich_image(tmp_path / "src")
    push_layout(image.layout, f"{registry_plain.host}/killed/rich:v1", tls_verify=False)
    # Every manifest PUT fails with 503 and a long Retry-After, so the process is stuck inside the push.
    fault_proxy.fail("PUT", "/manifests/", status=503, times=1000, retry_after="30")
    config_file = write_config(
        tmp_path / "config.yaml",
        tmp_path / "work",
        {fault_proxy.host: registry_plain.source()},
        registry={"max_retries": 50},
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accel.cli.accelctl",
            "convert",
            "--config",
            str(config_file),
            f"{fault_proxy.host}/killed/rich:v1",
            "--target",
            f"{fault_proxy.host}/killed/rich:out",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: fault_proxy.count("PUT", "/manifests/") >= 1 or proc.poll() is not None, 60)
        assert proc.poll() is None, "the conversion ended before reaching the manifest push"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    fault_proxy.clear()
    config = make_config(tmp_path / "work2", {registry_plain.host: registry_plain.source()})
    with Converter(config) as converter:
        repo_digest = converter.client.head_manifest(registry_plain.host, "killed/rich", "out")
    assert repo_digest is None
    with pytest.raises(NotFoundError):
        Converter(config).client.get_manifest(registry_plain.host, "killed/rich", "out")


def test_parsed_target_manifest_round_trips(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src")
    source = f"{registry_plain.host}/roundtrip/rich:v1"
    push_layout(image.layout, source, tls_verify=False)
    config = make_config(tmp_path / "work", {registry_plain.host: registry_plain.source()})
    with Converter(config) as converter:
        result = converter.convert(source)
        fetched = converter.client.get_manifest(registry_plain.host, "roundtrip/rich", "v1-oci")
    assert fetched.digest == result.target_digest
    document = parse_manifest(fetched.data, fetched.media_type)
    assert isinstance(document, Manifest)
    assert document.to_bytes() == fetched.data


def _skopeo_push(server: RegistryServer) -> dict[str, object]:
    creds = server.credentials()
    return {
        "tls_verify": server.scheme == "https",
        "creds": creds,
        "cert_dir": Path(server.ca_file).parent if server.ca_file else None,
    }


def _wait_for(condition: object, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")
