"""RegistryClient against a real docker-registry 2.8 in every mode (plain HTTP, Basic over TLS, tokens)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from accel.config import RegistryClientConfig, SourceConfig
from accel.errors import (
    ConfigError,
    DigestMismatchError,
    NotFoundError,
    RegistryError,
    TransientRegistryError,
    UnauthorizedError,
)
from accel.oci import digest as digests
from accel.oci import mediatypes as mt
from accel.registry import RegistryClient, RetryPolicy
from tests.support.faultproxy import FaultProxy
from tests.support.registry import PULL_USER, RegistryServer

pytestmark = pytest.mark.integration

FAST = RegistryClientConfig(max_retries=3, backoff_initial=0.01, backoff_max=0.05, timeout=20)


def make_client(
    server: RegistryServer,
    settings: RegistryClientConfig = FAST,
    source: SourceConfig | None = None,
    **kw: Any,
) -> RegistryClient:
    return RegistryClient({server.host: source or server.source()}, settings, **kw)


def proxied(proxy: FaultProxy, settings: RegistryClientConfig = FAST, **kw: Any) -> RegistryClient:
    return RegistryClient({proxy.host: SourceConfig(plain_http=True)}, settings, **kw)


def new_repo(prefix: str = "test") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digests.of_bytes(data), "size": len(data), **extra}


def push_image(
    client: RegistryClient, host: str, repo: str, tag: str, docker: bool = False
) -> tuple[str, bytes]:
    """Push a one-layer image; returns (manifest digest, manifest bytes)."""
    layer = os.urandom(2048)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    client.push_blob_bytes(host, repo, layer)
    client.push_blob_bytes(host, repo, config)
    media_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG, config),
        "layers": [descriptor(mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP, layer)],
    }
    data = json.dumps(manifest, indent=1).encode()
    return client.put_manifest(host, repo, tag, data, media_type), data


# ------------------------------------------------------------------------------------------- every mode


@pytest.mark.parametrize("chunk_size", [0, 64 << 10])
def test_push_and_pull_blob(registry: RegistryServer, chunk_size: int) -> None:
    repo = new_repo()
    blob = os.urandom(300_000)
    digest = digests.of_bytes(blob)
    settings = FAST.model_copy(update={"upload_chunk_size": chunk_size})
    with make_client(registry, settings) as client:
        assert not client.blob_exists(registry.host, repo, digest)
        seen: list[int] = []
        outcome = client.push_blob(
            registry.host, repo, digest, len(blob), lambda: io.BytesIO(blob), progress=seen.append
        )
        assert outcome == "uploaded"
        assert sum(seen) == len(blob)
        assert client.blob_exists(registry.host, repo, digest)
        assert client.push_blob(registry.host, repo, digest, len(blob), lambda: io.BytesIO(blob)) == "exists"
        sink = io.BytesIO()
        client.pull_blob(registry.host, repo, digest, len(blob), sink)
        assert sink.getvalue() == blob
        assert client.get_blob(registry.host, repo, digest) == blob


def test_mount_across_repositories(registry: RegistryServer) -> None:
    source_repo, target_repo, unrelated = new_repo(), new_repo(), new_repo()
    blob = os.urandom(4096)
    with make_client(registry) as client:
        digest = client.push_blob_bytes(registry.host, source_repo, blob)
        opened: list[int] = []

        def open_source() -> io.BytesIO:
            opened.append(1)
            return io.BytesIO(blob)

        outcome = client.push_blob(
            registry.host, target_repo, digest, len(blob), open_source, mount_from=source_repo
        )
        assert outcome == "mounted"
        assert opened == []  # nothing was uploaded
        assert client.get_blob(registry.host, target_repo, digest) == blob
        # The registry answers 202 when the source repo lacks the blob: the client uploads instead.
        other = os.urandom(1024)
        other_digest = digests.of_bytes(other)
        outcome = client.push_blob(
            registry.host,
            unrelated,
            other_digest,
            len(other),
            lambda: io.BytesIO(other),
            mount_from=source_repo,
        )
        assert outcome == "uploaded"
        assert client.get_blob(registry.host, unrelated, other_digest) == other


def test_manifests_index_tags(registry: RegistryServer) -> None:
    repo = new_repo()
    host = registry.host
    with make_client(registry) as client:
        oci_digest, oci_data = push_image(client, host, repo, "oci")
        docker_digest, docker_data = push_image(client, host, repo, "docker", docker=True)
        index = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                descriptor(mt.OCI_MANIFEST, oci_data, platform={"architecture": "amd64", "os": "linux"}),
                descriptor(
                    mt.DOCKER_MANIFEST, docker_data, platform={"architecture": "arm64", "os": "linux"}
                ),
            ],
        }
        index_data = json.dumps(index).encode()
        index_digest = client.put_manifest(host, repo, "multi", index_data, mt.OCI_INDEX)
        assert index_digest == digests.of_bytes(index_data)

        for reference, digest, data, media_type in [
            ("oci", oci_digest, oci_data, mt.OCI_MANIFEST),
            ("docker", docker_digest, docker_data, mt.DOCKER_MANIFEST),
            ("multi", index_digest, index_data, mt.OCI_INDEX),
        ]:
            for ref in (reference, digest):
                fetched = client.get_manifest(host, repo, ref)
                assert (fetched.data, fetched.media_type, fetched.digest) == (data, media_type, digest)
                head = client.head_manifest(host, repo, ref)
                assert head is not None
                assert (head.media_type, head.digest, head.size) == (media_type, digest, len(data))

        assert sorted(client.list_tags(host, repo)) == ["docker", "multi", "oci"]
        assert client.head_manifest(host, repo, "missing") is None
        with pytest.raises(NotFoundError):
            client.get_manifest(host, repo, "missing")
        with pytest.raises(NotFoundError):
            client.get_blob(host, repo, digests.of_bytes(b"never pushed"))


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_what_we_pushed(registry: RegistryServer) -> None:
    repo = new_repo()
    with make_client(registry) as client:
        _, data = push_image(client, registry.host, repo, "v1")
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry.skopeo_args(""), f"docker://{registry.host}/{repo}:v1"],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == data


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_copies_what_we_pushed_into_an_oci_layout(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    repo = new_repo()
    with make_client(registry_plain) as client:
        digest, data = push_image(client, registry_plain.host, repo, "v1")
    manifest = json.loads(data)
    out = subprocess.run(
        [
            "skopeo",
            "copy",
            "--preserve-digests",
            *registry_plain.skopeo_args("src"),
            f"docker://{registry_plain.host}/{repo}:v1",
            f"oci:{tmp_path / 'layout'}:v1",
        ],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    blobs = tmp_path / "layout" / "blobs" / "sha256"
    assert (blobs / digests.hex_part(digest)).read_bytes() == data
    for desc in [manifest["config"], *manifest["layers"]]:
        assert digests.of_bytes((blobs / digests.hex_part(desc["digest"])).read_bytes()) == desc["digest"]


# ------------------------------------------------------------------------------------------- auth


def test_basic_auth_wrong_password(registry_tls: RegistryServer) -> None:
    wrong = "definitely-wrong-pw-4711"
    source = registry_tls.source(password=wrong)
    repo = new_repo()
    with make_client(registry_tls, source=source) as client:
        with pytest.raises(UnauthorizedError) as info:
            client.get_manifest(registry_tls.host, repo, "latest")
        assert f"registry {registry_tls.host} refused credentials for {repo}" in str(info.value)
        assert wrong not in str(info.value) and wrong not in repr(info.value) and wrong not in repr(client)
        creds = source.credentials(registry_tls.host)
        assert creds is not None and creds[1] == wrong  # the source did carry the wrong password


def test_tls_insecure_and_untrusted(registry_tls: RegistryServer) -> None:
    repo = new_repo()
    insecure = registry_tls.source().model_copy(update={"ca_file": "", "insecure": True})
    with make_client(registry_tls, source=insecure) as client:
        digest = client.push_blob_bytes(registry_tls.host, repo, b"over unverified TLS")
    untrusted = registry_tls.source().model_copy(update={"ca_file": ""})
    with (
        make_client(registry_tls, source=untrusted) as client,
        pytest.raises(RegistryError, match=r"TLS certificate of .* not trusted") as info,
    ):
        client.get_blob(registry_tls.host, repo, digest)
    assert not info.value.transient


def test_one_client_shared_by_threads(registry: RegistryServer) -> None:
    repo = new_repo()
    blobs = [os.urandom(50_000 + i) for i in range(8)]
    with make_client(registry) as client:

        def roundtrip(blob: bytes) -> bytes:
            digest = client.push_blob_bytes(registry.host, repo, blob)
            sink = io.BytesIO()
            client.pull_blob(registry.host, repo, digest, len(blob), sink)
            return sink.getvalue()

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(roundtrip, blobs)) == blobs


def test_anonymous_is_refused_with_clear_message(registry_tls: RegistryServer) -> None:
    source = SourceConfig(ca_file=registry_tls.ca_file)
    no_docker_config = Path("/nonexistent/config.json")
    with (
        make_client(registry_tls, source=source, docker_config=no_docker_config) as client,
        pytest.raises(UnauthorizedError, match="refused anonymous access"),
    ):
        client.list_tags(registry_tls.host, "anything")


def test_token_push_pull_and_cache(registry_token: RegistryServer) -> None:
    assert registry_token.token_server is not None
    repo = new_repo()
    host = registry_token.host
    with make_client(registry_token) as client:
        digest, _ = push_image(client, host, repo, "v1")
        before = client.auth.token_requests
        for _ in range(3):
            client.get_manifest(host, repo, digest)
        assert client.auth.token_requests - before == 1  # one pull token, then served from the cache
    asked = [r for r in registry_token.token_server.requests if f"repository:{repo}:pull,push" in r["scopes"]]
    assert asked and all(r["user"] == "pusher" and r["method"] == "GET" for r in asked)


def test_token_pull_only_user_cannot_push(registry_token: RegistryServer) -> None:
    host = registry_token.host
    repo = new_repo()
    with make_client(registry_token) as pusher:
        digest = pusher.push_blob_bytes(host, repo, b"shared content")
    source = registry_token.source(PULL_USER[0])
    with make_client(registry_token, source=source) as puller:
        assert puller.get_blob(host, repo, digest) == b"shared content"
        with pytest.raises(UnauthorizedError) as info:
            puller.push_blob_bytes(host, repo, b"new content")
    message = str(info.value)
    assert "insufficient_scope: push" in message
    assert f"registry {host} refused credentials for {repo}" in message
    assert PULL_USER[1] not in message


def test_token_wrong_password(registry_token: RegistryServer) -> None:
    source = registry_token.source(password="not-the-password")
    with (
        make_client(registry_token, source=source) as client,
        pytest.raises(UnauthorizedError, match="token server answered 401") as info,
    ):
        client.get_manifest(registry_token.host, new_repo(), "latest")
    assert "not-the-password" not in str(info.value)


# ------------------------------------------------------------------------------------------- faults


def test_retries_500_then_success(fault_proxy: FaultProxy, registry_plain: RegistryServer) -> None:
    repo = new_repo()
    with make_client(registry_plain) as direct:
        _, data = push_image(direct, registry_plain.host, repo, "v1")
    fault_proxy.fail("GET", rf"/v2/{repo}/manifests/", status=500, times=2)
    with proxied(fault_proxy) as client:
        assert client.get_manifest(fault_proxy.host, repo, "v1").data == data
    assert fault_proxy.count("GET", rf"/v2/{repo}/manifests/v1$") == 3


def test_429_honours_retry_after(fault_proxy: FaultProxy, registry_plain: RegistryServer) -> None:
    repo = new_repo()
    with make_client(registry_plain) as direct:
        digest = direct.push_blob_bytes(registry_plain.host, repo, b"rate limited")
    waits: list[float] = []
    policy = RetryPolicy(max_retries=3, backoff_initial=0.01, backoff_max=5.0, sleep=waits.append)
    fault_proxy.fail("GET", rf"/v2/{repo}/blobs/", status=429, times=1, retry_after="2")
    with proxied(fault_proxy, retry=policy) as client:
        assert client.get_blob(fault_proxy.host, repo, digest) == b"rate limited"
    assert waits == [2.0]
    assert fault_proxy.count("GET", rf"/v2/{repo}/blobs/") == 2


def test_exhausted_retries_raise_transient(fault_proxy: FaultProxy) -> None:
    repo = new_repo()
    fault_proxy.fail("GET", rf"/v2/{repo}/manifests/", status=503, times=100)
    with proxied(fault_proxy) as client, pytest.raises(TransientRegistryError, match="HTTP 503"):
        client.get_manifest(fault_proxy.host, repo, "v1")
    assert fault_proxy.count("GET", rf"/v2/{repo}/manifests/") == FAST.max_retries + 1


def test_dropped_blob_download_resumes_with_range(
    fault_proxy: FaultProxy, registry_plain: RegistryServer
) -> None:
    repo = new_repo()
    blob = os.urandom(1 << 20)
    with make_client(registry_plain) as direct:
        digest = direct.push_blob_bytes(registry_plain.host, repo, blob)
    cut = 300_000
    fault_proxy.drop("GET", rf"/v2/{repo}/blobs/", after=cut)
    sink = io.BytesIO()
    with proxied(fault_proxy) as client:
        client.pull_blob(fault_proxy.host, repo, digest, len(blob), sink)
    assert sink.getvalue() == blob
    gets = [
        headers for method, path, headers in fault_proxy.requests if method == "GET" and "/blobs/" in path
    ]
    assert len(gets) == 2
    assert "Range" not in gets[0] and gets[1].get("Range") == f"bytes={cut}-"


def test_chunked_upload_sends_patches(fault_proxy: FaultProxy) -> None:
    repo = new_repo()
    blob = os.urandom(200_000)
    settings = FAST.model_copy(update={"upload_chunk_size": 64 << 10})
    with proxied(fault_proxy, settings) as client:
        digest = client.push_blob_bytes(fault_proxy.host, repo, blob)
        assert client.get_blob(fault_proxy.host, repo, digest) == blob
    assert fault_proxy.count("PATCH", rf"/v2/{repo}/blobs/uploads/") == 4  # 3 x 64 KiB + the rest
    assert fault_proxy.count("PUT", rf"/v2/{repo}/blobs/uploads/") == 1


def test_upload_retried_after_500(fault_proxy: FaultProxy) -> None:
    repo = new_repo()
    blob = os.urandom(10_000)
    opened: list[int] = []

    def open_source() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(blob)

    fault_proxy.fail("PUT", rf"/v2/{repo}/blobs/uploads/", status=500, times=1)
    with proxied(fault_proxy) as client:
        digest = digests.of_bytes(blob)
        assert client.push_blob(fault_proxy.host, repo, digest, len(blob), open_source) == "uploaded"
        assert client.get_blob(fault_proxy.host, repo, digest) == blob
    assert len(opened) == 2  # the source is reopened for the retried upload


def test_corrupted_manifest_is_rejected(fault_proxy: FaultProxy, registry_plain: RegistryServer) -> None:
    repo = new_repo()
    with make_client(registry_plain) as direct:
        digest, _ = push_image(direct, registry_plain.host, repo, "v1")
    fault_proxy.corrupt("GET", rf"/v2/{repo}/manifests/", times=2)
    with proxied(fault_proxy) as client:
        for reference in ("v1", digest):
            with pytest.raises(DigestMismatchError, match=f"digest mismatch: expected {digest}"):
                client.get_manifest(fault_proxy.host, repo, reference)


def test_corrupted_blob_is_rejected(fault_proxy: FaultProxy, registry_plain: RegistryServer) -> None:
    repo = new_repo()
    with make_client(registry_plain) as direct:
        digest = direct.push_blob_bytes(registry_plain.host, repo, os.urandom(5000))
    fault_proxy.corrupt("GET", rf"/v2/{repo}/blobs/", times=2)
    with proxied(fault_proxy) as client:
        with pytest.raises(DigestMismatchError):
            client.get_blob(fault_proxy.host, repo, digest)
        with pytest.raises(DigestMismatchError):
            client.pull_blob(fault_proxy.host, repo, digest, 5000, io.BytesIO())


def test_unconfigured_host_is_refused_before_any_io(fault_proxy: FaultProxy) -> None:
    with RegistryClient({"elsewhere.example:5000": SourceConfig()}, FAST) as client:
        with pytest.raises(
            ConfigError, match=f"registry {fault_proxy.host} is not configured under provider.source"
        ):
            client.get_manifest(fault_proxy.host, "repo", "latest")
        with pytest.raises(ConfigError):
            client.push_blob_bytes(fault_proxy.host, "repo", b"x")
    assert fault_proxy.requests == []


def test_registry_stopped_then_restarted(restartable_registry: RegistryServer) -> None:
    host = restartable_registry.host
    repo = new_repo()
    with make_client(restartable_registry) as client:
        digest = client.push_blob_bytes(host, repo, b"survives restarts")
        restartable_registry.stop()
        with pytest.raises(TransientRegistryError, match="ConnectError"):
            client.blob_exists(host, repo, digest)
        restartable_registry.start()
        assert client.get_blob(host, repo, digest) == b"survives restarts"


# ------------------------------------------------------------------------------------------- referrers


def test_referrers_fall_back_to_tag_schema(registry_plain: RegistryServer) -> None:
    host = registry_plain.host
    repo = new_repo()
    artifact_type = "application/vnd.example.sbom.v1"
    with make_client(registry_plain) as client:
        subject_digest, subject_data = push_image(client, host, repo, "v1")
        assert client.referrers(host, repo, subject_digest)["manifests"] == []

        empty = b"{}"
        client.push_blob_bytes(host, repo, empty)
        referrer = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor(mt.OCI_EMPTY, empty),
            "layers": [descriptor(mt.OCI_EMPTY, empty)],
            "subject": descriptor(mt.OCI_MANIFEST, subject_data),
        }
        referrer_data = json.dumps(referrer).encode()
        result = client.put_manifest_ex(
            host, repo, digests.of_bytes(referrer_data), referrer_data, mt.OCI_MANIFEST
        )
        assert result.subject_digest is None  # registry 2.8 does not index subjects: we maintain the tag
        client.add_referrer_to_fallback_tag(
            host, repo, subject_digest, descriptor(mt.OCI_MANIFEST, referrer_data, artifactType=artifact_type)
        )

        index = client.referrers(host, repo, subject_digest)
        assert [m["digest"] for m in index["manifests"]] == [result.digest]
        assert client.referrers(host, repo, subject_digest, artifact_type)["manifests"] == index["manifests"]
        assert client.referrers(host, repo, subject_digest, "application/other")["manifests"] == []
        assert "sha256-" + digests.hex_part(subject_digest) in client.list_tags(host, repo)


def test_blobs_larger_than_a_manifest_limit(registry_plain: RegistryServer) -> None:
    """HEAD answers carry the blob's size but no body; ranged reads return exactly the asked bytes."""
    data = os.urandom(9 << 20)
    digest = digests.of_bytes(data)
    repo = new_repo("large")
    with make_client(registry_plain) as client:
        assert not client.blob_exists(registry_plain.host, repo, digest)
        client.push_blob(registry_plain.host, repo, digest, len(data), lambda: io.BytesIO(data))
        assert client.blob_exists(registry_plain.host, repo, digest)
        assert (
            client.push_blob(registry_plain.host, repo, digest, len(data), lambda: io.BytesIO(data))
            == "exists"
        )
        tail = client.read_blob_range(registry_plain.host, repo, digest, len(data) - 1000, 1000)
        middle = client.read_blob_range(registry_plain.host, repo, digest, 5 << 20, 4096)
    assert tail == data[-1000:]
    assert middle == data[5 << 20 : (5 << 20) + 4096]
