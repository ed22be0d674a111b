"""The error hierarchy shared by every layer of the service.

Each error carries an API ``code`` (the upstream service's ``ERR_*`` strings where one exists), the HTTP
status it maps to, and whether retrying the same work later may succeed (``transient``). The API turns an
error into ``{"code", "message"}``; the CLI turns it into one line and an exit code; the task engine uses
``transient`` to decide between a retry and FAILED.

Messages never contain credentials: callers pass references and hosts, never auth headers or tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

# accelctl's exit codes. The README's table is checked against this one, so the two cannot drift apart.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: (
        "the conversion failed (registry, format, driver), `accelctl check` found a problem, "
        "or acceld refused the request"
    ),
    EXIT_USAGE: "usage, configuration or image reference error; nothing was contacted or written",
    EXIT_UNREACHABLE: "`accelctl task ...`: acceld cannot be reached at `--addr`",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class AccelError(Exception):
    """Base of every error this package raises on purpose.

    ``notes`` are the details behind the message (one per layer, say), for output that lists them one by
    one; the message already summarises them, so callers that show only the message lose nothing.
    """

    code: str = "ERR_INTERNAL"
    status: int = 500
    exit_code: int = EXIT_FAILED
    transient: bool = False

    def __init__(self, message: str, *, notes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.notes = list(notes)


class ConfigError(AccelError):
    """The configuration file is missing, malformed or inconsistent."""

    code = "ERR_ILLEGAL_PARAMETER"
    status = 400
    exit_code = EXIT_USAGE


class InvalidReferenceError(AccelError):
    """An image reference (``host/repo:tag@digest`` or ``oci:PATH[:TAG]``) cannot be parsed."""

    code = "ERR_ILLEGAL_PARAMETER"
    status = 400
    exit_code = EXIT_USAGE


class RegistryError(AccelError):
    """A registry answered with an error or could not be reached."""

    code = "ERR_REGISTRY"
    status = 502


class TransientRegistryError(RegistryError):
    """A fault that may go away: 5xx, 429, timeouts, dropped connections (after the client's own retries)."""

    transient = True


class UnauthorizedError(RegistryError):
    """The registry refused our credentials, or they lack the scope the operation needs."""

    code = "ERR_UNAUTHORIZED"
    status = 401


class NotFoundError(RegistryError):
    """A manifest, blob or repository does not exist."""

    code = "ERR_NOT_FOUND"
    status = 404


class DigestMismatchError(AccelError):
    """Content does not match the digest it was addressed by."""

    code = "ERR_DIGEST_MISMATCH"
    status = 502


class ContentError(AccelError):
    """The local content store cannot read or write a blob."""

    code = "ERR_CONTENT"


class FormatError(AccelError):
    """A layer cannot be read or converted by a format library.

    ``layer`` names the layer (its digest) and ``entry`` the tar entry where the problem is, when known.
    """

    code = "ERR_CONVERT_FAILED"
    status = 422

    def __init__(self, message: str, *, layer: str | None = None, entry: str | None = None) -> None:
        self.reason = message
        self.layer = layer
        self.entry = entry
        where = []
        if layer:
            where.append(f"layer {layer}")
        if entry is not None:
            where.append(f"entry {entry!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def in_layer(self, layer: str) -> FormatError:
        """The same error, now naming the layer it happened in (format code does not know layer digests)."""
        if self.layer:
            return self
        err = type(self)(self.reason, layer=layer, entry=self.entry)
        err.__cause__ = self.__cause__
        return err


class ConversionError(AccelError):
    """A conversion failed for a reason other than the format or the registry."""

    code = "ERR_CONVERT_FAILED"
    status = 500


class UnsupportedError(AccelError):
    """The input uses something this service does not handle (schema1 manifests, unknown media types)."""

    code = "ERR_UNSUPPORTED"
    status = 422


class CanceledError(ConversionError):
    """The conversion was canceled on request (API cancel, shutdown)."""

    code = "ERR_CANCELED"
    status = 409
