"""A small threaded HTTP reverse proxy with scriptable faults, for registry client tests.

Faults match a method and a regex searched in the request path, and apply a given number of times:

* ``fail(...)``: answer ``status`` (e.g. 500, or 429 with Retry-After) without contacting the upstream
  (``skip``: only after that many matching requests went through, e.g. the second PATCH of an upload);
* ``drop(...)``: send the headers and the first ``after`` bytes of the upstream's body, then close;
* ``corrupt(...)``: pass the upstream answer on with one body byte changed (headers untouched);
* ``hold(...)``: send the headers and the first ``after`` bytes, then the rest once the test sets the
  fault's ``release`` event (``reached`` is set when the first part is out).

Every request is recorded, so tests can count e.g. blob GETs. Bodies are buffered: test-sized payloads only.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
)


@dataclass
class Fault:
    kind: str  # "fail" | "drop" | "corrupt"
    method: str
    pattern: re.Pattern[str]
    times: int
    status: int = 500
    retry_after: str | None = None
    after: int = 0
    skip: int = 0
    seen: int = 0
    hits: int = 0
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """Forwards ``http://127.0.0.1:<port>`` to ``upstream`` (``host:port``, plain HTTP)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, selected headers)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultproxy", daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ scripting

    def fail(
        self,
        method: str,
        pattern: str,
        status: int = 500,
        times: int = 1,
        retry_after: str | None = None,
        skip: int = 0,
    ) -> Fault:
        return self._add(
            Fault(
                "fail", method, re.compile(pattern), times, status=status, retry_after=retry_after, skip=skip
            )
        )

    def drop(self, method: str, pattern: str, after: int, times: int = 1) -> Fault:
        return self._add(Fault("drop", method, re.compile(pattern), times, after=after))

    def corrupt(self, method: str, pattern: str, times: int = 1) -> Fault:
        return self._add(Fault("corrupt", method, re.compile(pattern), times))

    def hold(self, method: str, pattern: str, after: int, times: int = 1) -> Fault:
        return self._add(Fault("hold", method, re.compile(pattern), times, after=after))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def count(self, method: str, pattern: str = "") -> int:
        """How many requests with ``method`` had a path matching ``pattern``."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(1 for m, path, _ in self.requests if m == method and regex.search(path))

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _take(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.requests.append((method, path, headers))
            for fault in self._faults:
                if fault.method == method and fault.hits < fault.times and fault.pattern.search(path):
                    fault.seen += 1
                    if fault.seen <= fault.skip:
                        continue
                    fault.hits += 1
                    return fault
        return None


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (ConnectionError, TimeoutError):
                self.close_connection = True

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _proxy(self) -> None:
            method = self.command
            path = urlsplit(self.path).path
            selected = {k: v for k, v in self.headers.items() if k.lower() in ("range", "content-range")}
            body = self._read_body()
            fault = proxy._take(method, path, selected)
            if fault is not None and fault.kind == "fail":
                self._fail(fault)
                return
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                upstream.request(method, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                response_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                status, reason = response.status, response.reason
            finally:
                upstream.close()
            if fault is not None and fault.kind == "corrupt" and data:
                data = data[:-1] + bytes([data[-1] ^ 0x20])
            self.send_response(status, reason)
            for key, value in response_headers:
                if key.lower() != "content-length" or method == "HEAD":
                    self.send_header(key, value)
            if method != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method == "HEAD":
                return
            if fault is not None and fault.kind == "drop":
                self.wfile.write(data[: fault.after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None and fault.kind == "hold":
                self.wfile.write(data[: fault.after])
                self.wfile.flush()
                fault.reached.set()
                if not fault.release.wait(120):
                    raise TimeoutError("held answer never released")
                data = data[fault.after :]
            self.wfile.write(data)

        def _fail(self, fault: Fault) -> None:
            data = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected fault"}]}).encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _proxy

    return Handler
