"""logfmt log lines (``time=... level=info msg="..." task=... source=...``), one line per event.

Like the Go service's logrus text output: readable by people, parseable by machines. Fields passed with
``extra={...}`` become ``key=value`` pairs; callers never pass credentials.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_BARE = re.compile(r"^[A-Za-z0-9_./:@+-]+$")
# Anything a terminal, grep or a log shipper could act on: C0 and C1 controls, DEL, line and paragraph
# separators, bidirectional overrides and zero-width marks (they reorder or hide text), the BOM, and lone
# surrogates (undecodable bytes smuggled in through surrogateescape). Request paths put these in fields.
_UNSAFE = re.compile(
    r'[\\"\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]'
)
_SHORT = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _quote(value: object) -> str:
    """Bare when safe, else double-quoted with every unsafe character escaped: one printable line."""
    text = str(value)
    if text and _BARE.match(text):
        return text
    return f'"{_UNSAFE.sub(_escape, text)}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [
            f"time={when.replace('+00:00', 'Z')}",
            f"level={record.levelname.lower().replace('warning', 'warn')}",
            f"msg={_quote(record.getMessage())}",
        ]
        if record.name and not record.name.startswith("accel"):
            parts.append(f"logger={_quote(record.name)}")
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value not in (None, ""):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger (ours, uvicorn's) through one logfmt handler on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Our middleware logs requests; uvicorn's access log would duplicate them.
    logging.getLogger("uvicorn.access").disabled = True
