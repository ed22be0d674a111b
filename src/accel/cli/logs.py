"""Logging tweaks both entry points share."""

from __future__ import annotations

import logging

# httpx logs every request at INFO; for a daemon that is most of its log (15 of 39 lines for two tasks).
_CHATTY = ("httpx",)


class _DemoteToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # The logger's level check ran against INFO; run it again for what the record is now.
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def demote_http_client_logs() -> None:
    """Log the HTTP client's per-request INFO lines at DEBUG (seen with ``--log-level debug`` / ``-v``)."""
    for name in _CHATTY:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DemoteToDebug) for f in logger.filters):
            logger.addFilter(_DemoteToDebug())
