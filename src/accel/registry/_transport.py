"""An httpx transport that reads the socket in 1 MiB steps instead of httpcore's 64 KiB.

With 64 KiB reads, h11's buffer handling costs more CPU than hashing and writing the blob (measured: ~2.6 s
per GB against ~0.8 s with 1 MiB reads), which caps pulls well below what loopback or a LAN delivers. The
transport is an ordinary ``httpx.HTTPTransport`` whose connection pool gets a network backend with larger
reads; when a proxy is configured (or httpx changes shape) the stock pool is kept.
"""

from __future__ import annotations

import functools
import ssl
import typing

import httpcore
import httpx

_READ_SIZE = 1 << 20


class _LargeReadStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, _READ_SIZE), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _LargeReadBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def make_transport(verify: bool | ssl.SSLContext, limits: httpx.Limits) -> httpx.HTTPTransport:
    # One context for the transport and its pool, and one for every host that verifies by default: loading
    # the CA bundle takes ~27 ms a time, paid by every process before its first request (a plain-HTTP
    # registry needs it too, for a redirect to HTTPS storage).
    context = _default_context() if verify is True else httpx.create_ssl_context(verify=verify)
    transport = httpx.HTTPTransport(verify=context, limits=limits)
    pool = getattr(transport, "_pool", None)
    if type(pool) is httpcore.ConnectionPool:
        transport._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_LargeReadBackend(),
        )
    return transport


@functools.cache
def _default_context() -> ssl.SSLContext:
    """httpx's own default (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), made once per process."""
    return httpx.create_ssl_context(verify=True)
