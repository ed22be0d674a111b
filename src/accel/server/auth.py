"""Authentication of webhook calls and of the task API.

Webhooks: Harbor sends the policy's ``auth_header`` verbatim as ``Authorization``. It must equal the
``provider.source.<host>.webhook.auth_header`` of the host in each ``resource_url`` (constant-time compare);
a missing header, or a source with an empty ``auth_header``, is refused. The API token
(``Authorization: Bearer <server.api_token>``) is accepted too, so an operator can queue conversions.

Task API (list, show, cancel, retry): ``Authorization: Bearer <server.api_token>``. When ``api_token`` is
empty, only clients on the loopback interface or the unix socket are served. Rationale: whoever can
reach those already runs code on this host (and could read the config and its registry credentials), so a
token adds nothing there, while ``accelctl task list`` keeps working out of the box. Caveat: behind a
reverse proxy on the same host every client looks local, so set ``api_token`` in that setup.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from accel.config import Config, SourceConfig
from accel.errors import AccelError


class AuthError(AccelError):
    code = "ERR_UNAUTHORIZED"
    status = 401


class ForbiddenError(AccelError):
    code = "ERR_FORBIDDEN"
    status = 403


class UnknownHostError(AccelError):
    """A resource_url names a registry we are not configured for: nothing is contacted."""

    code = "ERR_ILLEGAL_PARAMETER"
    status = 400


def _same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def bearer_ok(config: Config, header: str | None) -> bool:
    token = config.server.api_token
    return bool(token) and header is not None and _same(header, f"Bearer {token}")


def webhook_caller_known(config: Config, header: str | None) -> bool:
    """True when the header matches some source's auth_header or the API token (checked before parsing)."""
    if not header:
        return False
    matches = [_same(header, src.webhook.auth_header) for src in config.provider.source.values()]
    return any(matches) or bearer_ok(config, header)


def check_webhook_host(config: Config, header: str | None, host: str) -> None:
    """The caller must hold the secret of ``host``; an unconfigured host is a bad request, not a lookup."""
    source = find_source(config, host)
    if source is None:
        raise UnknownHostError(f"registry host {host!r} is not a configured source (provider.source)")
    if not (header and (_same(header, source.webhook.auth_header) or bearer_ok(config, header))):
        raise AuthError(f"invalid auth config for host {host}")


def find_source(config: Config, host: str) -> SourceConfig | None:
    """``provider.source.<host>``: the exact key as upstream does, else a case-insensitive match."""
    source = config.source(host)
    if source is None:
        source = next((s for k, s in config.provider.source.items() if k.lower() == host.lower()), None)
    return source


def check_api(config: Config, header: str | None, client_host: str | None) -> None:
    if config.server.api_token:
        if not bearer_ok(config, header):
            raise AuthError("a valid API token is required (Authorization: Bearer <server.api_token>)")
        return
    if not _local(client_host):
        raise ForbiddenError(
            "server.api_token is not configured: the task API only serves loopback and unix-socket clients"
        )


def check_same_origin(headers: Mapping[str, str]) -> None:
    """Refuse a state-changing request a browser sent on behalf of another site (CSRF).

    Browsers name the requesting site in ``Sec-Fetch-Site`` and ``Origin``; other clients (accelctl,
    curl, Harbor) send neither and are let through. This matters when ``server.api_token`` is empty and
    loopback clients need no token: without it any page an operator opens could cancel tasks.
    """
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise ForbiddenError(f"cross-site request refused (Sec-Fetch-Site: {site[:20]})")
    origin = headers.get("origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != headers.get("host")):
        raise ForbiddenError(f"cross-origin request refused (Origin: {origin[:100]})")


def _local(client_host: str | None) -> bool:
    if not client_host:  # unix socket: uvicorn reports no peer address
        return True
    try:
        return ipaddress.ip_address(client_host).is_loopback
    except ValueError:
        return False
