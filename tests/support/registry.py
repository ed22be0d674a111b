"""Real registries for tests: Debian's docker-registry (distribution 2.8) in three modes.

* ``plain``: no auth, plain HTTP;
* ``tls``: htpasswd Basic auth over HTTPS with a CA generated here (clients use ``ca_file``);
* ``token``: Bearer tokens from :mod:`tests.support.tokenserver` (plain HTTP).

Each :class:`RegistryServer` can be stopped and started again on the same port with the same storage.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from accel.config import SourceConfig
from tests.support.tokenserver import TokenServer, User

REGISTRY_BIN = os.environ.get("ACCEL_TEST_REGISTRY_BIN", "/usr/bin/docker-registry")
MODES = ("plain", "tls", "token")
PUSH_USER = ("pusher", "push-secret-1")
PULL_USER = ("puller", "pull-secret-2")


def registry_available() -> bool:
    return Path(REGISTRY_BIN).is_file() and os.access(REGISTRY_BIN, os.X_OK)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RegistryServer:
    mode: str
    root: Path
    port: int
    users: dict[str, str] = field(default_factory=dict)
    ca_file: str = ""
    token_server: TokenServer | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.mode == "tls" else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yml"

    @property
    def log_file(self) -> Path:
        return self.root / "registry.log"

    def credentials(self, user: str | None = None) -> tuple[str, str] | None:
        """(user, password) of ``user``, or of the push user when there is one and ``user`` is None."""
        if not self.users:
            return None
        name = user or PUSH_USER[0]
        return name, self.users[name]

    def source(self, user: str | None = None, password: str | None = None) -> SourceConfig:
        """A SourceConfig for this registry, with the push user's credentials unless told otherwise."""
        creds = self.credentials(user)
        auth = ""
        if creds:
            auth = base64.b64encode(
                f"{creds[0]}:{password if password is not None else creds[1]}".encode()
            ).decode()
        return SourceConfig(auth=auth, plain_http=self.scheme == "http", ca_file=self.ca_file)

    def skopeo_args(self, side: str = "dest", user: str | None = None) -> list[str]:
        """skopeo options for this registry as ``side`` (``dest`` or ``src``); for inspect use ``side=""``."""
        prefix = f"--{side}-" if side else "--"
        args: list[str] = []
        creds = self.credentials(user)
        if creds:
            args.append(f"{prefix}creds={creds[0]}:{creds[1]}")
        if self.ca_file:
            args.append(f"{prefix}cert-dir={Path(self.ca_file).parent}")
        else:
            args.append(f"{prefix}tls-verify=false")
        return args

    # ----------------------------------------------------------------------------------- process

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        log = self.log_file.open("ab")
        try:
            self._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)},
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self.token_server is not None:
            self.token_server.stop()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        verify: Any = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else False
        last = "not started"
        with httpx.Client(verify=verify, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    raise RuntimeError(f"docker-registry exited early:\n{self.log_file.read_text()[-3000:]}")
                try:
                    status = client.get(f"{self.url}/v2/").status_code
                    if status in (200, 401):
                        return
                    last = f"HTTP {status}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.05)  # polling interval while waiting on a real condition, not synchronisation
        self.stop()
        raise RuntimeError(
            f"docker-registry not ready after {timeout}s ({last}):\n{self.log_file.read_text()[-3000:]}"
        )


def start_registry(mode: str, root: Path, port: int | None = None) -> RegistryServer:
    """Write the config for ``mode`` under ``root`` and start the registry (call ``close()`` when done)."""
    if mode not in MODES:
        raise ValueError(f"unknown registry mode {mode!r}")
    root.mkdir(parents=True, exist_ok=True)
    server = RegistryServer(mode, root, port or free_port())
    server.storage.mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(server.storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": server.host, "secret": base64.b64encode(os.urandom(24)).decode()},
    }
    if mode == "tls":
        server.users = {PUSH_USER[0]: PUSH_USER[1], PULL_USER[0]: PULL_USER[1]}
        tls_dir = root / "certs"
        server.ca_file = str(_make_tls(tls_dir))
        config["http"]["tls"] = {
            "certificate": str(tls_dir / "server.cert"),
            "key": str(tls_dir / "server.key"),
        }
        config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(_htpasswd(root, server.users))}}
    elif mode == "token":
        server.users = {PUSH_USER[0]: PUSH_USER[1], PULL_USER[0]: PULL_USER[1]}
        tokens = TokenServer(
            root,
            {
                PUSH_USER[0]: User(PUSH_USER[1], frozenset({"pull", "push", "delete"})),
                PULL_USER[0]: User(PULL_USER[1], frozenset({"pull"})),
            },
        )
        tokens.start()
        server.token_server = tokens
        config["auth"] = {
            "token": {
                "realm": tokens.realm,
                "service": tokens.service,
                "issuer": tokens.issuer,
                "rootcertbundle": str(tokens.cert_file),
            }
        }
    server.config_file.write_text(yaml.safe_dump(config))
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    atexit.register(server.stop)  # a safety net if the caller never reaches close(); stop() is idempotent
    return server


def _htpasswd(root: Path, users: dict[str, str]) -> Path:
    path = root / "htpasswd"
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RuntimeError("htpasswd (apache2-utils) is needed for the Basic-auth registry")
    lines = []
    for user, password in users.items():
        out = subprocess.run([htpasswd, "-Bbn", user, password], check=True, capture_output=True, text=True)
        lines.append(out.stdout.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


def _make_tls(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it; returns the CA file (ca.crt)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accel test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    # The CA sits alone in its folder: skopeo's cert-dir would take a *.cert/*.key pair as a client cert.
    (directory / "ca").mkdir(exist_ok=True)
    (directory / "ca" / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.cert").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory / "ca" / "ca.crt"
