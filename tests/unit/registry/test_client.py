"""RegistryClient behaviour that a real registry 2.8 cannot show, on httpx.MockTransport."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from accel.config import RegistryClientConfig, SourceConfig
from accel.content import ContentStore
from accel.errors import (
    ConfigError,
    DigestMismatchError,
    InvalidReferenceError,
    RegistryError,
    TransientRegistryError,
    UnauthorizedError,
    UnsupportedError,
)
from accel.oci import digest as digests
from accel.oci import mediatypes as mt
from accel.registry import RegistryClient, RetryPolicy

HOST = "reg.example:5000"
SECRET = "pa55-w0rd-xyz"
AUTH = base64.b64encode(f"robot$ci:{SECRET}".encode()).decode()

Handler = Callable[[httpx.Request], httpx.Response]


def client(
    handler: Handler, source: SourceConfig | None = None, host: str = HOST, **kw: Any
) -> RegistryClient:
    policy = RetryPolicy(max_retries=2, backoff_initial=0.001, backoff_max=0.001, sleep=lambda _: None)
    return RegistryClient(
        {host: source or SourceConfig(auth=AUTH)},
        RegistryClientConfig(**kw),
        retry=policy,
        transport=httpx.MockTransport(handler),
    )


def test_schema1_is_unsupported() -> None:
    body = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": mt.DOCKER_SCHEMA1_SIGNED})

    with client(handler) as c, pytest.raises(UnsupportedError, match="schema1"):
        c.get_manifest(HOST, "lib/x", "latest")


def test_media_type_from_body_when_header_is_generic() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Accept"].split(", ") == list(mt.MANIFEST_ACCEPT)
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    with client(handler) as c:
        fetched = c.get_manifest(HOST, "lib/x", "latest")
    assert (fetched.media_type, fetched.digest, fetched.size) == (
        mt.OCI_INDEX,
        digests.of_bytes(body),
        len(body),
    )


def test_endpoints_per_host() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"tags": ["a"]})

    sources = {"docker.io": SourceConfig(), "local:5000": SourceConfig(plain_http=True)}
    with RegistryClient(sources, transport=httpx.MockTransport(handler)) as c:
        c.list_tags("docker.io", "library/busybox")
        c.list_tags("local:5000", "x")
    assert seen == [
        "https://registry-1.docker.io/v2/library/busybox/tags/list?n=1000",
        "http://local:5000/v2/x/tags/list?n=1000",
    ]


def test_unconfigured_host() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    with client(handler) as c, pytest.raises(ConfigError, match="registry other:1 is not configured"):
        c.blob_exists("other:1", "x", digests.of_bytes(b""))


def test_bad_ca_file_is_a_config_error(tmp_path: Any) -> None:
    source = SourceConfig(ca_file=str(tmp_path / "missing.pem"))
    with RegistryClient({HOST: source}) as c, pytest.raises(ConfigError, match="ca_file"):
        c.ping(HOST)


def test_pull_restarts_when_range_is_ignored() -> None:
    blob = bytes(range(256)) * 400
    digest = digests.of_bytes(blob)
    calls: list[str | None] = []

    class DropAfter(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield blob[:1000]
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Range"))
        if len(calls) == 1:
            return httpx.Response(200, stream=DropAfter(), headers={"Content-Length": str(len(blob))})
        return httpx.Response(200, content=blob)  # ignores Range: the whole blob again

    sink = io.BytesIO()
    with client(handler) as c:
        c.pull_blob(HOST, "x", digest, len(blob), sink)
    assert sink.getvalue() == blob
    assert calls == [None, "bytes=1000-"]

    class WriteOnly:
        def __init__(self) -> None:
            self.data = b""

        def write(self, chunk: bytes) -> int:
            self.data += chunk
            return len(chunk)

    calls.clear()
    with client(handler) as c, pytest.raises(RegistryError, match="server ignored Range"):
        c.pull_blob(HOST, "x", digest, len(blob), WriteOnly())  # type: ignore[arg-type]


def test_bearer_flow_and_no_secret_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    token_calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            token_calls.append(request)
            if request.method == "GET":
                return httpx.Response(405)
            return httpx.Response(200, json={"access_token": "tok-1", "expires_in": 300})
        if request.headers.get("Authorization") != "Bearer tok-1":
            challenge = 'Bearer realm="https://auth.example/token",service="reg"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": challenge_error("insufficient_scope")},
            json={"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]},
        )

    caplog.set_level(logging.DEBUG)
    with client(handler) as c, pytest.raises(UnauthorizedError) as info:
        c.push_blob_bytes(HOST, "team/app", b"data")
    assert str(info.value) == f"registry {HOST} refused credentials for team/app (insufficient_scope: push)"
    get, post = token_calls[0], token_calls[1]
    assert get.url.params.get_list("scope") == ["repository:team/app:pull,push"]
    assert get.url.params["service"] == "reg"
    assert get.headers["Authorization"] == "Basic " + AUTH
    form = dict(item.split("=", 1) for item in post.content.decode().split("&"))
    assert form["grant_type"] == "password" and form["scope"] == "repository%3Ateam%2Fapp%3Apull%2Cpush"
    for text in (str(info.value), repr(info.value), caplog.text, repr(c)):
        assert SECRET not in text and AUTH not in text


def challenge_error(error: str) -> str:
    return f'Bearer realm="https://auth.example/token",service="reg",error="{error}"'


def test_list_tags_follows_link_pagination() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "last" not in request.url.params:
            link = '</v2/x/tags/list?last=b&n=2>; rel="next"'
            return httpx.Response(200, json={"tags": ["a", "b"]}, headers={"Link": link})
        assert request.url.params["last"] == "b"
        return httpx.Response(200, json={"tags": ["c"]})

    with client(handler) as c:
        assert c.list_tags(HOST, "x") == ["a", "b", "c"]


def test_referrers_api_filtered_client_side() -> None:
    subject = digests.of_bytes(b"subject")
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": digests.of_bytes(b"1"),
                "size": 1,
                "artifactType": "a/x",
            },
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": digests.of_bytes(b"2"),
                "size": 1,
                "artifactType": "a/y",
            },
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v2/x/referrers/{subject}"
        return httpx.Response(200, json=index, headers={"Content-Type": mt.OCI_INDEX})

    with client(handler) as c:
        assert c.referrers(HOST, "x", subject) == index
        assert [m["artifactType"] for m in c.referrers(HOST, "x", subject, "a/y")["manifests"]] == ["a/y"]


def test_drops_at_the_same_place_without_range_support_exhaust_retries() -> None:
    blob = b"x" * 5000
    calls: list[str | None] = []

    class DropAfter(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield blob[:1000]
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Range"))
        return httpx.Response(200, stream=DropAfter(), headers={"Content-Length": str(len(blob))})

    with client(handler) as c, pytest.raises(TransientRegistryError, match="ReadError"):
        c.pull_blob(HOST, "x", digests.of_bytes(blob), len(blob), io.BytesIO())
    assert calls == [None, "bytes=1000-", "bytes=1000-"]  # max_retries=2: no endless restarts


def test_a_sink_that_verifies_is_trusted_with_the_digest_but_not_the_size(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 40
    digest = digests.of_bytes(blob)
    served = {"body": blob}
    ranges: list[str | None] = []

    class DropAfter(httpx.SyncByteStream):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __iter__(self):  # type: ignore[no-untyped-def]
            yield self.data[:1000]
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("Range"))
        body = served["body"]
        if len(ranges) == 1:  # the first answer drops: the resume offset comes from the byte count
            return httpx.Response(200, stream=DropAfter(body), headers={"Content-Length": str(len(body))})
        if ranges[-1]:
            start = int(ranges[-1].removeprefix("bytes=").rstrip("-"))
            headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
            return httpx.Response(206, content=body[start:], headers=headers)
        return httpx.Response(200, content=body)

    store = ContentStore(tmp_path / "store")
    with client(handler) as c:
        with store.writer(digest, len(blob)) as sink:
            c.pull_blob(HOST, "x", digest, len(blob), sink, sink_verifies=True)  # type: ignore[arg-type]
            assert sink.commit() == (digest, len(blob))
        assert ranges == [None, "bytes=1000-"]
        assert store.read_bytes(digest) == blob

        # Same size, other bytes: the client leaves the check to the sink, whose commit refuses them.
        served["body"] = bytes(reversed(blob))
        ranges.clear()
        with store.writer(digest, len(blob)) as sink:
            c.pull_blob(HOST, "y", digest, len(blob), sink, sink_verifies=True)  # type: ignore[arg-type]
            with pytest.raises(DigestMismatchError, match="digest mismatch"):
                sink.commit()
        with pytest.raises(DigestMismatchError, match="digest mismatch"):
            c.pull_blob(HOST, "y", digest, len(blob), io.BytesIO())

        # A longer body is refused by the client either way.
        served["body"] = blob + b"x"
        ranges.clear()
        with pytest.raises(DigestMismatchError, match="more than the expected"):
            c.pull_blob(HOST, "z", digest, len(blob), io.BytesIO(), sink_verifies=True)


@pytest.mark.parametrize(
    ("repo", "reference"),
    [("../etc", "latest"), ("Upper/case", "latest"), ("a//b", "v1"), ("ok/repo", "../x"), ("ok", "-bad")],
)
def test_names_are_checked_before_they_reach_a_url(repo: str, reference: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    with client(handler) as c, pytest.raises(InvalidReferenceError):
        c.get_manifest(HOST, repo, reference)


def test_valid_names_pass() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    with client(handler) as c:
        for repo, ref in [
            ("library/busybox", "1.36.1-musl"),
            ("a_b/c.d/e-f", "sha256:" + "0" * 64),
            ("x", "V_1"),
        ]:
            assert c.head_manifest(HOST, repo, ref) is None


def test_hosts_that_verify_by_default_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading the CA bundle costs every process tens of milliseconds before its first request.
    import socket
    import ssl

    made: list[object] = []
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(args or kwargs)
        return create(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    with socket.socket() as probe:  # a port nobody listens on: each ping fails at once, before any TLS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hosts = {f"127.0.0.1:{port}": SourceConfig(), f"localhost:{port}": SourceConfig(plain_http=True)}
    settings = RegistryClientConfig(max_retries=0)
    with RegistryClient(hosts, settings) as client:
        for host in hosts:
            with pytest.raises(RegistryError):
                client.ping(host)
    # None at all when an earlier client of this process made the shared one already; never one per host.
    assert len(made) <= 1
