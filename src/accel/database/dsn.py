"""Database addresses: which engine a ``provider.database`` names, and how to show one without its secret."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_SCHEMES = ("postgresql", "postgres")
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")


def is_postgres_dsn(dsn: str) -> bool:
    return urlsplit(dsn).scheme in _SCHEMES


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password (in the user part or a ``password=`` parameter) replaced by ``***``."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc, query=_PASSWORD_PARAM.sub(r"\1***", parts.query)))
