"""A tiny Harbor-style token server for registry 2.8's ``auth.token`` (RS256 JWTs, libtrust key ids)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """docker/libtrust's key id: base32 of the first 240 bits of sha256(DER SPKI), 12 groups of 4 chars."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, 48, 4))


@dataclass
class User:
    password: str
    actions: frozenset[str]  # the most this user may be granted on any repository


@dataclass
class TokenServer:
    """Issues tokens granting each requested scope's actions that the user is allowed; serves in a thread."""

    directory: Path
    users: dict[str, User]
    service: str = "test-registry"
    issuer: str = "test-token-issuer"
    expires_in: int = 300
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = libtrust_key_id(self._key.public_key())
        self.cert_file = self.directory / "token-signing.crt"
        self.cert_file.write_bytes(_self_signed(self._key).public_bytes(serialization.Encoding.PEM))
        self._lock = threading.Lock()

    @property
    def realm(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="tokenserver", daemon=True
        ).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def issue(self, username: str | None, scopes: list[str]) -> str:
        allowed = self.users[username].actions if username else frozenset()
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = sorted(set(actions.split(",")) & allowed)
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": username or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})

    def authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """(ok, username) from a Basic header; no header means anonymous."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        try:
            username, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False, None
        user = self.users.get(username)
        if scheme.lower() != "basic" or user is None or user.password != password:
            return False, None
        return True, username

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token signer")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            self._answer("GET", self.headers.get("Authorization"), query.get("scope", []))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            header = None
            if form.get("grant_type") == ["password"]:
                raw = f"{form.get('username', [''])[0]}:{form.get('password', [''])[0]}"
                header = "Basic " + base64.b64encode(raw.encode()).decode()
            scopes = " ".join(form.get("scope", [])).split()
            self._answer("POST", header, scopes)

        def _answer(self, method: str, auth: str | None, scopes: list[str]) -> None:
            ok, username = server.authenticate(auth)
            server.record({"method": method, "user": username, "ok": ok, "scopes": scopes})
            if not ok:
                self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                return
            token = server.issue(username, scopes)
            issued = dt.datetime.now(dt.UTC).isoformat()
            self._send(
                200,
                {"token": token, "access_token": token, "expires_in": server.expires_in, "issued_at": issued},
            )

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
