"""The HTTP front end: Harbor webhook intake, task API, health and metrics (FastAPI)."""

from accel.server.app import MAX_BODY, create_app
from accel.server.auth import AuthError, ForbiddenError, UnknownHostError
from accel.server.logfmt import LogfmtFormatter, setup_logging
from accel.server.payload import Event, PayloadError, Reference, parse_event, parse_reference

__all__ = [
    "MAX_BODY",
    "AuthError",
    "Event",
    "ForbiddenError",
    "LogfmtFormatter",
    "PayloadError",
    "Reference",
    "UnknownHostError",
    "create_app",
    "parse_event",
    "parse_reference",
    "setup_logging",
]
