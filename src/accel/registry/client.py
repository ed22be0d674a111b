"""A synchronous, thread-safe client for the OCI distribution API (one instance shared by worker threads).

Only hosts configured under ``provider.source`` are contacted; each gets its own ``httpx.Client`` so TLS
settings (``insecure``, ``ca_file``, ``plain_http``) stay per host. Every call runs under the one retry
policy (``retry.py``), every fetched manifest and blob is checked against its digest.
"""

from __future__ import annotations

import io
import json
import logging
import re
import ssl
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urljoin

from accel.config import RegistryClientConfig, SourceConfig
from accel.errors import (
    ConfigError,
    DigestMismatchError,
    InvalidReferenceError,
    NotFoundError,
    RegistryError,
    TransientRegistryError,
    UnauthorizedError,
    UnsupportedError,
)
from accel.oci import digest as digests
from accel.oci.mediatypes import (
    DOCKER_SCHEMA1_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    MANIFEST_ACCEPT,
    OCI_INDEX,
)
from accel.registry import referrers as _referrers
from accel.registry.auth import Authenticator, Credentials, network_errors, parse_www_authenticate
from accel.registry.retry import RETRYABLE_STATUSES, RetryableError, RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("accel.registry")

MAX_MANIFEST_SIZE = 8 << 20  # registries cap manifests at 4 MiB; refuse to buffer anything much larger
_IO_CHUNK = 1 << 20
_ERROR_BODY_LIMIT = 64 << 10
_API_ENDPOINTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
# The distribution spec's name and tag grammars; checked before a name becomes part of a URL path.
_REPO_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_REFERENCE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_SCHEMA1 = frozenset(
    {DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED, "application/vnd.docker.distribution.manifest.v1+jws"}
)


@dataclass(frozen=True)
class FetchedDescriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True)
class _Reply:
    """A completed answer whose body has been read (within a size limit)."""

    status_code: int
    headers: httpx.Headers
    url: str
    content: bytes


@dataclass(frozen=True)
class PutManifestResult:
    digest: str
    subject_digest: str | None  # the OCI-Subject header: the registry indexed the subject for referrers


class _Op:
    """What one request needs to authenticate and how to describe it in errors."""

    __slots__ = ("action", "host", "repo", "scopes", "what")

    def __init__(
        self, host: str, repo: str, what: str, *, push: bool = False, mount_from: str | None = None
    ) -> None:
        self.host = host
        self.repo = repo
        self.what = what
        self.action = "push" if push else "pull"
        self.scopes = [f"repository:{repo}:{'pull,push' if push else 'pull'}"] if repo else []
        if mount_from:
            self.scopes.append(f"repository:{mount_from}:pull")


Body = bytes | Callable[[], Iterable[bytes]] | None


class RegistryClient:
    """Pull and push manifests and blobs on the registries of ``provider.source``.

    ``retry`` replaces the policy built from ``settings`` (tests inject one with a recording ``sleep``);
    ``transport`` replaces the network (tests pass ``httpx.MockTransport``). One instance may be shared by
    any number of threads.
    """

    def __init__(
        self,
        sources: Mapping[str, SourceConfig],
        settings: RegistryClientConfig = RegistryClientConfig(),  # noqa: B008 - frozen model
        *,
        docker_config: Path | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._sources = dict(sources)
        self._settings = settings
        self._docker_config = docker_config
        self._retry = retry or RetryPolicy.from_config(settings)
        self._transport = transport
        self._lock = threading.Lock()
        self._clients: dict[str, httpx.Client] = {}
        self._credentials: dict[str, Credentials | None] = {}
        self._closed = False
        self.auth = Authenticator(self._credentials_for, self._client_for)

    def __repr__(self) -> str:
        return f"RegistryClient(hosts={sorted(self._sources)!r})"

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            self._closed = True
        for client in clients:
            client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- hosts and TLS

    def _source(self, host: str) -> SourceConfig:
        source = self._sources.get(host)
        if source is None:
            raise ConfigError(f"registry {host} is not configured under provider.source")
        return source

    def base_url(self, host: str) -> str:
        source = self._source(host)
        return f"{'http' if source.plain_http else 'https'}://{_API_ENDPOINTS.get(host, host)}"

    def _credentials_for(self, host: str) -> Credentials | None:
        with self._lock:
            if host in self._credentials:
                return self._credentials[host]
        pair = self._source(host).credentials(host, self._docker_config)
        creds = Credentials(*pair) if pair else None
        with self._lock:
            self._credentials[host] = creds
        return creds

    def _client_for(self, host: str) -> httpx.Client:
        source = self._source(host)
        with self._lock:
            if self._closed:
                raise RegistryError("registry client is closed")
            client = self._clients.get(host)
            if client is None:
                # Imported on first use: a conversion between OCI layouts never loads the HTTP stack.
                import httpx

                from accel.registry._transport import make_transport

                limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
                client = httpx.Client(
                    timeout=httpx.Timeout(self._settings.timeout, connect=min(self._settings.timeout, 30.0)),
                    transport=self._transport or make_transport(_verify(source), limits),
                    headers={"User-Agent": "acceleration-service"},
                )
                self._clients[host] = client
            return client

    def _url(self, host: str, repo: str, *parts: str) -> str:
        if not _REPO_RE.fullmatch(repo):
            raise InvalidReferenceError(f"invalid repository name {repo!r}")
        if len(parts) == 2 and parts[0] == "manifests" and not _REFERENCE_RE.fullmatch(parts[1]):
            raise InvalidReferenceError(f"invalid tag or digest {parts[1]!r}")
        return "/".join([self.base_url(host), "v2", repo, *(quote(p, safe=":@") for p in parts)])

    # ----------------------------------------------------------------------------------- one request

    def _open(
        self,
        op: _Op,
        method: str,
        url: str,
        *,
        ok: Collection[int],
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        params: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send one request (re-authenticating once on 401); return the open streaming response.

        Statuses outside ``ok`` become RetryableError (5xx, 429) or an AccelError; the caller closes the
        response it gets back.
        """
        client = self._client_for(op.host)
        sent_auth: str | None = None
        for round_ in range(2):
            request_headers = dict(headers or {})
            sent_auth = self.auth.authorization(op.host, op.repo, op.scopes, op.action)
            if sent_auth:
                request_headers["Authorization"] = sent_auth
            content = body() if callable(body) else body
            request = client.build_request(
                method, url, headers=request_headers, content=content, params=params
            )
            try:
                response = client.send(request, stream=True, follow_redirects=follow_redirects)
            except network_errors() as exc:
                if _tls_verify_failure(exc):
                    # A configuration problem, not a transient fault: retrying cannot help.
                    raise RegistryError(
                        f"{method} {op.what}: TLS certificate of {op.host} not trusted"
                        " (set ca_file, or insecure: true, under provider.source)"
                    ) from None
                raise RetryableError(f"{method} {op.what}: {_describe_exc(exc)}") from None
            except _http_error() as exc:
                raise RegistryError(f"{method} {op.what}: {_describe_exc(exc)}") from None
            status = response.status_code
            if status in ok:
                return response
            detail = _error_detail(response)
            if status == 401 and round_ == 0:
                challenge = self.auth.learn(op.host, response.headers.get("WWW-Authenticate", ""))
                if challenge is not None:
                    if sent_auth and sent_auth.startswith("Bearer "):
                        self.auth.invalidate(op.host, op.scopes)
                        continue
                    if not sent_auth and (challenge.scheme == "bearer" or self._credentials_for(op.host)):
                        continue
            raise self._status_error(op, method, status, response.headers, detail)
        raise AssertionError("unreachable")  # pragma: no cover

    def _status_error(
        self, op: _Op, method: str, status: int, headers: httpx.Headers, detail: tuple[str, str]
    ) -> Exception:
        code, message = detail
        if status in RETRYABLE_STATUSES:
            return RetryableError(
                f"{method} {op.what}: HTTP {status}",
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        if status in (401, 403):
            reason = code.lower() or ("unauthorized" if status == 401 else "denied")
            for challenge in parse_www_authenticate(headers.get("WWW-Authenticate", "")):
                reason = challenge.params.get("error", reason)
            who = "credentials" if self._credentials_for(op.host) else "anonymous access"
            return UnauthorizedError(
                f"registry {op.host} refused {who} for {op.repo} ({reason}: {op.action})"
            )
        suffix = f" ({code}{': ' + message if message else ''})" if code else ""
        if status == 404:
            return NotFoundError(f"{op.what} not found{suffix}")
        return RegistryError(f"{method} {op.what}: HTTP {status}{suffix}")

    def _call(self, op: _Op, method: str, url: str, *, ok: Collection[int] = (200,), **kw: Any) -> _Reply:
        """One retried request whose (small) body is read completely."""
        return self._retry.call(lambda: self._call_once(op, method, url, ok=ok, **kw), f"{method} {op.what}")

    def _call_once(self, op: _Op, method: str, url: str, *, ok: Collection[int], **kw: Any) -> _Reply:
        """One attempt whose (small) body is read completely."""
        response = self._open(op, method, url, ok=ok, **kw)
        with closing(response):
            try:
                # A HEAD answer has no body; its Content-Length is the size of the blob or manifest.
                content = b"" if method == "HEAD" else _read_limited(response, MAX_MANIFEST_SIZE, op.what)
            except network_errors() as exc:
                raise RetryableError(f"{method} {op.what}: {_describe_exc(exc)}") from None
        return _Reply(response.status_code, response.headers, str(response.url), content)

    # ----------------------------------------------------------------------------------- general

    def ping(self, host: str) -> None:
        """GET /v2/ (anonymously answered 200 or 401 means the registry is there)."""
        op = _Op(host, "", f"registry {host}")
        url = f"{self.base_url(host)}/v2/"
        self._retry.call(lambda: self._open(op, "GET", url, ok=(200, 401)).close(), f"GET {op.what}")

    def list_tags(self, host: str, repo: str) -> list[str]:
        op = _Op(host, repo, f"tags of {host}/{repo}")
        url: str | None = self._url(host, repo, "tags", "list")
        params: dict[str, str] | None = {"n": "1000"}
        tags: list[str] = []
        while url:
            response = self._call(op, "GET", url, params=params)
            tags.extend(_json_object(response.content, op.what).get("tags") or [])
            match = _LINK_NEXT.search(response.headers.get("Link", ""))
            url = urljoin(response.url, match.group(1)) if match else None
            params = None
        return tags

    # ----------------------------------------------------------------------------------- manifests

    def get_manifest(self, host: str, repo: str, reference: str) -> FetchedManifest:
        what = f"manifest {_ref(host, repo, reference)}"
        op = _Op(host, repo, what)
        url = self._url(host, repo, "manifests", reference)
        response = self._call(op, "GET", url, headers={"Accept": ", ".join(MANIFEST_ACCEPT)})
        data = response.content
        media_type = _manifest_media_type(response.headers.get("Content-Type"), data)
        if media_type in _SCHEMA1:
            raise UnsupportedError(f"{what}: Docker schema1 manifests are not supported")
        actual = digests.of_bytes(data) if not digests.is_digest(reference) else _digest_as(reference, data)
        expected = (
            reference if digests.is_digest(reference) else response.headers.get("Docker-Content-Digest")
        )
        if expected and digests.is_digest(expected):
            if expected.split(":", 1)[0] != actual.split(":", 1)[0]:
                actual = _digest_as(expected, data)
            if actual != expected:
                raise DigestMismatchError(f"{what}: digest mismatch: expected {expected}, got {actual}")
        return FetchedManifest(data, media_type, actual)

    def head_manifest(self, host: str, repo: str, reference: str) -> FetchedDescriptor | None:
        what = f"manifest {_ref(host, repo, reference)}"
        op = _Op(host, repo, what)
        url = self._url(host, repo, "manifests", reference)
        try:
            response = self._call(op, "HEAD", url, headers={"Accept": ", ".join(MANIFEST_ACCEPT)})
        except NotFoundError:
            return None
        digest = (
            reference if digests.is_digest(reference) else response.headers.get("Docker-Content-Digest", "")
        )
        media_type = _manifest_media_type(response.headers.get("Content-Type"), b"")
        length = response.headers.get("Content-Length", "")
        if not digests.is_digest(digest) or not length.isdigit() or not media_type:
            # Some registries leave headers out of HEAD answers; a GET tells us everything (and verifies).
            try:
                fetched = self.get_manifest(host, repo, reference)
            except NotFoundError:
                return None
            return FetchedDescriptor(fetched.media_type, fetched.digest, fetched.size)
        return FetchedDescriptor(media_type, digest, int(length))

    def put_manifest(self, host: str, repo: str, reference: str, data: bytes, media_type: str) -> str:
        return self.put_manifest_ex(host, repo, reference, data, media_type).digest

    def put_manifest_ex(
        self, host: str, repo: str, reference: str, data: bytes, media_type: str
    ) -> PutManifestResult:
        """PUT a manifest; also reports the ``OCI-Subject`` header (absent: maintain the fallback tag)."""
        digest = digests.of_bytes(data)
        if digests.is_digest(reference) and _digest_as(reference, data) != reference:
            raise DigestMismatchError(
                f"manifest for {_ref(host, repo, reference)}: digest mismatch: got {digest}"
            )
        op = _Op(host, repo, f"manifest {_ref(host, repo, reference)}", push=True)
        url = self._url(host, repo, "manifests", reference)
        response = self._call(op, "PUT", url, ok=(200, 201), headers={"Content-Type": media_type}, body=data)
        returned = response.headers.get("Docker-Content-Digest")
        if returned and returned != digest and returned.startswith("sha256:"):
            raise DigestMismatchError(f"{op.what}: registry stored {returned}, we sent {digest}")
        return PutManifestResult(digest, response.headers.get("OCI-Subject"))

    def delete_manifest(self, host: str, repo: str, digest: str) -> None:
        op = _Op(host, repo, f"manifest {_ref(host, repo, digests.validate(digest))}", push=True)
        op.scopes = [f"repository:{repo}:delete"]
        self._call(op, "DELETE", self._url(host, repo, "manifests", digest), ok=(200, 202))

    # ----------------------------------------------------------------------------------- blobs

    def blob_exists(self, host: str, repo: str, digest: str) -> bool:
        return self._blob_exists(
            _Op(host, repo, f"blob {_ref(host, repo, digests.validate(digest))}"), digest
        )

    def _blob_exists(self, op: _Op, digest: str) -> bool:
        url = self._url(op.host, op.repo, "blobs", digest)
        try:
            self._call(op, "HEAD", url, follow_redirects=True)
        except NotFoundError:
            return False
        return True

    def get_blob(self, host: str, repo: str, digest: str, max_size: int = 16 << 20) -> bytes:
        what = f"blob {_ref(host, repo, digests.validate(digest))}"
        op = _Op(host, repo, what)
        url = self._url(host, repo, "blobs", digest)

        def attempt() -> bytes:
            with closing(
                self._open(op, "GET", url, ok=(200,), follow_redirects=True, headers=_IDENTITY)
            ) as response:
                try:
                    return _read_limited(response, max_size, what)
                except network_errors() as exc:
                    raise RetryableError(f"GET {what}: {_describe_exc(exc)}") from None

        data = self._retry.call(attempt, f"GET {what}")
        digests.verify(data, digest, what)
        return data

    def read_blob_range(self, host: str, repo: str, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes of a blob from ``offset`` (a ranged GET; lazy readers of converted blobs).

        The bytes cannot be checked against the blob digest; callers verify them against digests the
        format records (a ToC, a zTOC). A server that ignores Range is answered by slicing, bounded by
        ``offset + length`` bytes read.
        """
        what = f"blob {_ref(host, repo, digests.validate(digest))} bytes {offset}+{length}"
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if length == 0:
            return b""
        op = _Op(host, repo, what)
        url = self._url(host, repo, "blobs", digest)
        headers = {**_IDENTITY, "Range": f"bytes={offset}-{offset + length - 1}"}

        def attempt() -> bytes:
            with closing(
                self._open(op, "GET", url, ok=(200, 206), follow_redirects=True, headers=headers)
            ) as response:
                try:
                    if response.status_code == 206:
                        if not _resumes_at(response, offset):
                            raise RegistryError(f"GET {what}: ranged answer does not start at byte {offset}")
                        data = _read_limited(response, length, what)
                    else:
                        data = _read_prefix(response, offset + length)[offset:]
                except network_errors() as exc:
                    raise RetryableError(f"GET {what}: {_describe_exc(exc)}") from None
            if len(data) != length:
                raise RegistryError(f"GET {what}: got {len(data)} bytes")
            return data

        return self._retry.call(attempt, f"GET {what}")

    def pull_blob(
        self,
        host: str,
        repo: str,
        digest: str,
        size: int | None,
        sink: BinaryIO,
        progress: Callable[[int], None] | None = None,
        *,
        sink_verifies: bool = False,
    ) -> None:
        """Stream a blob into ``sink``, resuming with ``Range`` after a dropped connection.

        ``sink`` only needs ``write``; ``seek``/``truncate`` are used solely when a server ignores Range on
        a resume and the download has to start over (then a non-rewindable sink fails the pull). Raises
        DigestMismatchError when the bytes do not match ``digest`` or ``size``. ``progress`` gets the byte
        count of every chunk written; after such a restart it counts the rewritten bytes again.

        ``sink_verifies`` leaves the digest check to a sink that hashes what it is given anyway (a content
        store writer checks it on commit): the bytes are hashed once. Sizes are still enforced here.
        """
        what = f"blob {_ref(host, repo, digests.validate(digest))}"
        op = _Op(host, repo, what)
        url = self._url(host, repo, "blobs", digest)

        def new_check() -> digests.Digester | digests.ByteCount:
            return digests.ByteCount() if sink_verifies else digests.Digester.for_digest(digest)

        state = {"digester": new_check()}
        # Only bytes beyond the furthest point reached count as progress: a server that ignores Range and
        # drops at the same spot every time must still exhaust the retries.
        furthest = [0]

        def attempt() -> None:
            digester = state["digester"]
            offset = digester.size
            headers = dict(_IDENTITY)
            if offset:
                headers["Range"] = f"bytes={offset}-"
            with closing(
                self._open(op, "GET", url, ok=(200, 206), headers=headers, follow_redirects=True)
            ) as response:
                if offset and response.status_code == 200:
                    log.info("%s: server ignored Range, restarting the download", what)
                    _rewind(sink, what)
                    digester = state["digester"] = new_check()
                elif offset and not _resumes_at(response, offset):
                    raise RegistryError(f"GET {what}: ranged answer does not start at byte {offset}")
                try:
                    for chunk in response.iter_bytes():
                        digester.update(chunk)
                        if size is not None and digester.size > size:
                            raise DigestMismatchError(f"{what}: more than the expected {size} bytes")
                        sink.write(chunk)
                        if progress:
                            progress(len(chunk))
                except network_errors() as exc:
                    reason = f"GET {what} at byte {digester.size}: {_describe_exc(exc)}"
                    raise RetryableError(reason, progressed=_advanced(furthest, digester.size)) from None
            if size is not None and digester.size < size:
                reason = f"GET {what}: body ended at byte {digester.size}"
                raise RetryableError(reason, progressed=_advanced(furthest, digester.size))

        self._retry.call(attempt, f"GET {what}")
        digester = state["digester"]
        if size is not None and digester.size != size:
            raise DigestMismatchError(f"{what}: size mismatch: expected {size}, got {digester.size}")
        if isinstance(digester, digests.Digester) and digester.digest != digest:
            raise DigestMismatchError(f"{what}: digest mismatch: expected {digest}, got {digester.digest}")

    def push_blob(
        self,
        host: str,
        repo: str,
        digest: str,
        size: int,
        open_source: Callable[[], BinaryIO],
        *,
        mount_from: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Make ``digest`` present in ``repo``: ``"exists"``, ``"mounted"`` or ``"uploaded"``.

        ``open_source`` is called for every upload attempt and must return the blob from its first byte;
        the stream is closed after each attempt. ``progress`` counts bytes sent, again on a retried upload.
        With ``upload_chunk_size`` set, one chunk at a time is held in memory.
        """
        what = f"blob {_ref(host, repo, digests.validate(digest))}"
        mount_from = mount_from if mount_from and mount_from != repo else None
        op = _Op(host, repo, what, push=True, mount_from=mount_from)
        if self._blob_exists(op, digest):
            return "exists"
        uploads = self._url(host, repo, "blobs", "uploads") + "/"

        def attempt() -> str:
            if mount_from:
                response = self._call_once(
                    op, "POST", uploads, ok=(201, 202), params={"mount": digest, "from": mount_from}
                )
                if response.status_code == 201:
                    return "mounted"
            else:
                response = self._call_once(op, "POST", uploads, ok=(202,))
            location = _location(response, what)
            if self._settings.upload_chunk_size:
                self._upload_chunked(op, location, digest, open_source, progress)
            else:
                self._upload_monolithic(op, location, digest, size, open_source, progress)
            return "uploaded"

        return self._retry.call(attempt, f"push {what}")

    def push_blob_bytes(self, host: str, repo: str, data: bytes, media_type: str | None = None) -> str:
        """Push a small blob held in memory; returns its digest. ``media_type`` is informational only."""
        digest = digests.of_bytes(data)
        self.push_blob(host, repo, digest, len(data), lambda: io.BytesIO(data))
        return digest

    def _upload_monolithic(
        self,
        op: _Op,
        location: str,
        digest: str,
        size: int,
        open_source: Callable[[], BinaryIO],
        progress: Callable[[int], None] | None,
    ) -> None:
        def body() -> Iterator[bytes]:
            with open_source() as source:
                while chunk := source.read(_IO_CHUNK):
                    yield chunk
                    if progress:
                        progress(len(chunk))

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        self._call_once(
            op, "PUT", _with_query(location, "digest", digest), ok=(201,), headers=headers, body=body
        )

    def _upload_chunked(
        self,
        op: _Op,
        location: str,
        digest: str,
        open_source: Callable[[], BinaryIO],
        progress: Callable[[int], None] | None,
    ) -> None:
        upload = BlobUpload(self, op, location)
        with open_source() as source:
            while chunk := source.read(self._settings.upload_chunk_size):
                upload.send(chunk)
                if progress:
                    progress(len(chunk))
        upload.commit(digest)

    def start_upload(self, host: str, repo: str) -> BlobUpload:
        """Open an upload session for a blob whose digest is not known yet (it is still being written):
        ``send`` its bytes in order as they come, ``commit`` it under its digest at the end. One attempt
        per request, no retries: a session that failed midway is in an unknown state, so the caller pushes
        the finished blob with ``push_blob`` instead (which retries)."""
        op = _Op(host, repo, f"blob upload to {host}/{repo}", push=True)
        uploads = self._url(host, repo, "blobs", "uploads") + "/"
        response = self._call_once(op, "POST", uploads, ok=(202,))
        return BlobUpload(self, op, _location(response, op.what))

    # ----------------------------------------------------------------------------------- referrers

    def referrers(
        self, host: str, repo: str, digest: str, artifact_type: str | None = None
    ) -> dict[str, Any]:
        """The referrers of ``digest`` as an OCI index (API first, then the ``sha256-<hex>`` tag)."""
        what = f"referrers of {_ref(host, repo, digests.validate(digest))}"
        op = _Op(host, repo, what)
        url = self._url(host, repo, "referrers", digest)
        params = {"artifactType": artifact_type} if artifact_type else None
        try:
            response: _Reply | None = self._call(op, "GET", url, params=params, headers={"Accept": OCI_INDEX})
        except (UnauthorizedError, TransientRegistryError):
            raise
        except RegistryError:
            # 404 from registries without the API (distribution 2.8); some answer 400/405 instead.
            response = None
        if response is not None and _media_type(response.headers.get("Content-Type")) in (OCI_INDEX, ""):
            index = _json_object(response.content, what)
            if isinstance(index.get("manifests"), list):
                return _referrers.filter_by_artifact_type(index, artifact_type)
        try:
            tagged = self.get_manifest(host, repo, _referrers.fallback_tag(digest))
        except NotFoundError:
            return _referrers.empty_index()
        index = _json_object(tagged.data, what)
        if not isinstance(index.get("manifests"), list):
            return _referrers.empty_index()
        return _referrers.filter_by_artifact_type(index, artifact_type)

    def add_referrer_to_fallback_tag(
        self, host: str, repo: str, subject_digest: str, descriptor: dict[str, Any]
    ) -> str:
        """Add ``descriptor`` to the subject's ``sha256-<hex>`` tag index (for registries without the API)."""
        tag = _referrers.fallback_tag(subject_digest)
        try:
            current: dict[str, Any] | None = _json_object(self.get_manifest(host, repo, tag).data, tag)
        except NotFoundError:
            current = None
        index = _referrers.with_referrer(current, descriptor)
        data = json.dumps(index, separators=(",", ":")).encode()
        return self.put_manifest(host, repo, tag, data, OCI_INDEX)


class BlobUpload:
    """One chunked upload session (the distribution API's POST, PATCH..., PUT ?digest=)."""

    def __init__(self, client: RegistryClient, op: _Op, location: str) -> None:
        self._client = client
        self._op = op
        self._location = location
        self.offset = 0

    def send(self, chunk: bytes) -> None:
        """PATCH the next ``chunk``; it is held in memory, so a re-authentication can resend it."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{self.offset}-{self.offset + len(chunk) - 1}",
            "Content-Length": str(len(chunk)),
        }
        response = self._client._call_once(
            self._op, "PATCH", self._location, ok=(202,), headers=headers, body=_slices(chunk)
        )
        self._location = _location(response, self._op.what)
        self.offset += len(chunk)

    def commit(self, digest: str) -> None:
        """Close the session: the registry verifies the bytes sent against ``digest``."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": "0"}
        url = _with_query(self._location, "digest", digests.validate(digest))
        self._client._call_once(self._op, "PUT", url, ok=(201,), headers=headers, body=b"")

    def cancel(self) -> None:
        """Drop the session (best effort: a registry also expires abandoned sessions itself)."""
        try:
            self._client._call_once(self._op, "DELETE", self._location, ok=(204, 404))
        except (RegistryError, RetryableError) as exc:
            log.debug("%s: cancel failed: %s", self._op.what, exc)


# --------------------------------------------------------------------------------------------- helpers

_IDENTITY = {"Accept-Encoding": "identity"}


@cache
def _http_error() -> type[Exception]:
    import httpx

    return httpx.HTTPError


def _verify(source: SourceConfig) -> bool | ssl.SSLContext:
    if source.insecure:
        return False
    if source.ca_file:
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cafile=source.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"provider.source: cannot load ca_file {source.ca_file}: {exc}") from None
        return context
    return True


def _ref(host: str, repo: str, reference: str) -> str:
    sep = "@" if digests.is_digest(reference) else ":"
    return f"{host}/{repo}{sep}{reference}"


def _describe_exc(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _manifest_media_type(content_type: str | None, data: bytes) -> str:
    media_type = _media_type(content_type)
    if media_type and media_type not in ("application/json", "text/plain", "application/octet-stream"):
        return media_type
    if data:
        try:
            body = json.loads(data)
        except ValueError:
            return media_type
        if isinstance(body, dict):
            if body.get("schemaVersion") == 1:
                return DOCKER_SCHEMA1_MANIFEST
            if isinstance(body.get("mediaType"), str):
                return str(body["mediaType"])
    return media_type


def _digest_as(expected: str, data: bytes) -> str:
    digester = digests.Digester.for_digest(expected)
    digester.update(data)
    return digester.digest


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise RegistryError(f"{what}: invalid JSON in the registry's answer") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{what}: expected a JSON object in the registry's answer")
    return value


def _read_prefix(response: httpx.Response, size: int) -> bytes:
    """The first ``size`` bytes of the body (or all of a shorter one); the rest is never read."""
    parts: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        parts.append(chunk)
        total += len(chunk)
        if total >= size:
            break
    return b"".join(parts)[:size]


def _read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what}: {length} bytes is more than the {limit} allowed")
    parts: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > limit:
            raise RegistryError(f"{what}: more than the {limit} bytes allowed")
        parts.append(chunk)
    return b"".join(parts)


def _error_detail(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of the registry's error body (``{"errors": [...]}``), read and closed."""
    try:
        raw = b""
        for chunk in response.iter_bytes():
            raw += chunk
            if len(raw) > _ERROR_BODY_LIMIT:
                break
    except _http_error():
        raw = b""
    finally:
        response.close()
    try:
        errors = json.loads(raw).get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), str(first.get("message", ""))[:200]
    except (ValueError, AttributeError, IndexError, TypeError):
        return "", ""


def _location(response: _Reply, what: str) -> str:
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"{what}: upload answer without a Location header")
    return urljoin(response.url, str(location))


def _with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={quote(value, safe='')}"


def _resumes_at(response: httpx.Response, offset: int) -> bool:
    if response.status_code != 206:
        return False
    match = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == offset


def _tls_verify_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx error <- httpcore error <- ssl error
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _slices(data: bytes) -> Callable[[], Iterator[bytes]]:
    """A re-startable body in 1 MiB pieces: httpcore re-slices a single large buffer on every partial send."""

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), _IO_CHUNK):
            yield data[start : start + _IO_CHUNK]

    return pieces


def _advanced(furthest: list[int], position: int) -> bool:
    if position > furthest[0]:
        furthest[0] = position
        return True
    return False


def _rewind(sink: BinaryIO, what: str) -> None:
    try:
        sink.seek(0)
        sink.truncate()
    except (AttributeError, OSError, ValueError) as exc:
        raise RegistryError(
            f"{what}: server ignored Range on resume and the sink cannot restart: {exc}"
        ) from None
