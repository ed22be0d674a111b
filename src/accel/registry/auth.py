"""Registry authentication: WWW-Authenticate challenges, Basic credentials and the Bearer token flow.

Token requests use ``GET <realm>?service=&scope=`` with Basic credentials, as docker and containers/image
do. It is the flow the distribution token spec requires every token server to implement (Harbor, Docker
Hub, registry's own token servers); the OAuth2 ``POST grant_type=password`` form is optional there and is
only tried when the GET is answered 404/405. We never ask for refresh tokens, so there is no refresh flow.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from accel.errors import RegistryError, UnauthorizedError
from accel.registry.retry import RETRYABLE_STATUSES, RetryableError, parse_retry_after

if TYPE_CHECKING:
    import httpx


@cache
def network_errors() -> tuple[type[Exception], ...]:
    """httpx's errors of a connection that failed or dropped (retryable). httpx is imported on first use,
    so only what talks to a registry loads it; an ``except`` evaluates this only once something raised."""
    import httpx

    return (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_DEFAULT_TOKEN_TTL = 60.0  # the token spec's default when the server sends no expires_in
_EXPIRY_MARGIN = 10.0  # renew a little early so a token does not expire in flight


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: lower-case scheme and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> list[str]:
        return self.params.get("scope", "").split()


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` (RFC 7235): several challenges, quoted strings with commas and escapes."""
    challenges: list[Challenge] = []
    pos, end = 0, len(header)
    current: Challenge | None = None
    while pos < end:
        while pos < end and header[pos] in " \t,":
            pos += 1
        match = _TOKEN_RE.match(header, pos)
        if not match:
            break
        word, pos = match.group(), match.end()
        rest = pos
        while rest < end and header[rest] in " \t":
            rest += 1
        if current is not None and rest < end and header[rest] == "=" and not _is_token68_tail(header, rest):
            value, pos = _param_value(header, rest + 1)
            current.params[word.lower()] = value
            continue
        current = Challenge(word.lower())
        challenges.append(current)
        token68 = _TOKEN68_RE.match(header, rest)
        if token68 and (token68.end() == end or header[token68.end()] in " \t,"):
            # `Negotiate abc==`: a token68 blob rather than parameters; we have no use for it.
            pos = token68.end()
    return challenges


def _is_token68_tail(header: str, eq: int) -> bool:
    # `abc==` has "=" followed by "=" or the end/comma: a token68, not `key=value`.
    nxt = eq + 1
    while nxt < len(header) and header[nxt] in " \t":
        nxt += 1
    return nxt >= len(header) or header[nxt] in ",="


def _param_value(header: str, pos: int) -> tuple[str, int]:
    end = len(header)
    while pos < end and header[pos] in " \t":
        pos += 1
    if pos < end and header[pos] == '"':
        out = []
        pos += 1
        while pos < end and header[pos] != '"':
            if header[pos] == "\\" and pos + 1 < end:
                pos += 1
            out.append(header[pos])
            pos += 1
        return "".join(out), pos + 1
    match = _TOKEN_RE.match(header, pos)
    if not match:
        return "", pos
    # Some servers send unquoted values containing ':' or '/', e.g. scope=repository:a/b:pull.
    stop = pos
    while stop < end and header[stop] not in ", \t":
        stop += 1
    return header[pos:stop], stop


class Credentials:
    """A username and password that never show up in repr, str or logs."""

    __slots__ = ("_password", "username")

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password

    def basic_header(self) -> str:
        raw = f"{self.username}:{self._password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def form(self) -> dict[str, str]:
        return {"username": self.username, "password": self._password}

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def scope_key(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))


class TokenCache:
    """Bearer tokens keyed by (host, scopes), dropped shortly before they expire. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, host: str, scopes: Iterable[str]) -> str | None:
        key = (host, scope_key(scopes))
        with self._lock:
            entry = self._tokens.get(key)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._tokens[key]
                return None
            return entry[0]

    def put(self, host: str, scopes: Iterable[str], token: str, expires_in: float) -> None:
        lifetime = max(expires_in - _EXPIRY_MARGIN, expires_in / 2)
        with self._lock:
            self._tokens[(host, scope_key(scopes))] = (token, self._clock() + lifetime)

    def drop(self, host: str, scopes: Iterable[str]) -> None:
        with self._lock:
            self._tokens.pop((host, scope_key(scopes)), None)


class Authenticator:
    """Remembers each host's challenge and produces ``Authorization`` values for a set of scopes."""

    def __init__(
        self,
        credentials_for: Callable[[str], Credentials | None],
        client_for: Callable[[str], httpx.Client],
        cache: TokenCache | None = None,
    ) -> None:
        self._credentials_for = credentials_for
        self._client_for = client_for
        self.cache = cache or TokenCache()
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self.token_requests = 0  # for tests and metrics: how often a token server was asked

    def learn(self, host: str, header: str) -> Challenge | None:
        """Record the usable challenge (Bearer preferred over Basic) of a 401 answer."""
        by_scheme = {c.scheme: c for c in parse_www_authenticate(header)}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        if challenge is not None:
            with self._lock:
                self._challenges[host] = challenge
        return challenge

    def known(self, host: str) -> Challenge | None:
        with self._lock:
            return self._challenges.get(host)

    def authorization(self, host: str, repo: str, scopes: list[str], action: str) -> str | None:
        """The header value for a request needing ``scopes``; None while the host has not challenged us."""
        challenge = self.known(host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self._credentials_for(host)
            return creds.basic_header() if creds else None
        token = self.cache.get(host, scopes)
        if token is None:
            token = self._fetch_token(host, repo, challenge, scopes, action)
        return "Bearer " + token

    def invalidate(self, host: str, scopes: list[str]) -> None:
        self.cache.drop(host, scopes)

    def _fetch_token(self, host: str, repo: str, challenge: Challenge, scopes: list[str], action: str) -> str:
        realm = challenge.params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"registry {host} sent a Bearer challenge without a usable realm")
        creds = self._credentials_for(host)
        service = challenge.params.get("service")
        params: list[tuple[str, str | int | float | bool | None]] = [("scope", s) for s in scopes]
        if service:
            params.insert(0, ("service", service))
        if creds:
            params.insert(0, ("account", creds.username))
        client = self._client_for(host)
        with self._lock:
            self.token_requests += 1
        try:
            headers = {"Authorization": creds.basic_header()} if creds else {}
            response = client.get(realm, params=params, headers=headers)
            if response.status_code in (404, 405) and creds:
                form = {"grant_type": "password", "client_id": "acceleration-service", **creds.form()}
                form["scope"] = " ".join(scopes)
                if service:
                    form["service"] = service
                response = client.post(realm, data=form)
        except network_errors() as exc:
            raise RetryableError(f"token server for {host}: {type(exc).__name__}") from None
        status = response.status_code
        if status in RETRYABLE_STATUSES:
            raise RetryableError(
                f"token server for {host} answered {status}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status in (401, 403):
            who = "credentials" if creds else "anonymous access"
            raise UnauthorizedError(
                f"registry {host} refused {who} for {repo} (token server answered {status}: {action})"
            )
        if status != 200:
            raise RegistryError(f"token server for {host} answered {status}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or _DEFAULT_TOKEN_TTL)
        except (ValueError, AttributeError, TypeError):
            token = None
            expires_in = 0.0
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server for {host} returned no token")
        self.cache.put(host, scopes, token, expires_in)
        return token
