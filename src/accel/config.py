"""The YAML configuration: upstream's keys (goharbor/acceleration-service) plus what a user needs.

Loading fails at start with a message that names the offending key: unknown keys, bad size strings, bad
base64 and a missing driver are all reported as ``ConfigError("<dotted.key>: <reason>")``.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from accel.database import is_postgres_dsn
from accel.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?)b?\s*$", re.IGNORECASE)
_SIZE_EXP = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_size(value: object) -> int:
    """Parse a size like go-humanize does: ``1000MB`` (decimal), ``1GiB`` (binary), ``512`` (bytes)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r} (expected e.g. 1000MB, 10GiB or a byte count)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** _SIZE_EXP[unit.lower()])


Size = Annotated[int, BeforeValidator(parse_size)]


def _as_string(value: object) -> str:
    # Upstream's driver.config is map[string]string; YAML users write `true` or `6` unquoted.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    raise ValueError(f"expected a string, got {type(value).__name__}")


DriverOption = Annotated[str, BeforeValidator(_as_string)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookConfig(_Strict):
    auth_header: str = ""


class SourceConfig(_Strict):
    """One registry host the service may contact (``provider.source.<host>``)."""

    auth: str = Field(default="", repr=False)
    insecure: bool = False
    plain_http: bool = False
    ca_file: str = ""
    webhook: WebhookConfig = WebhookConfig()

    @field_validator("auth")
    @classmethod
    def _auth_is_base64_pair(cls, value: str) -> str:
        if value:
            _decode_auth(value)
        return value

    def credentials(self, host: str, docker_config: Path | None = None) -> tuple[str, str] | None:
        """``(username, password)`` from ``auth``, else from docker's config.json, else None (anonymous)."""
        if self.auth:
            return _decode_auth(self.auth)
        return docker_credentials(host, docker_config)


def _decode_auth(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("invalid base64 (expected base64 of 'user:password')") from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise ValueError("decoded auth has no ':' (expected base64 of 'user:password')")
    return user, password


def default_docker_config() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def docker_credentials(host: str, path: Path | None = None) -> tuple[str, str] | None:
    """Credentials for ``host`` from a docker/cli ``config.json`` (``auths`` only; helpers are not run)."""
    path = path or default_docker_config()
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (OSError, ValueError):
        return None
    keys = [host, f"https://{host}", f"http://{host}"]
    if host in ("docker.io", "registry-1.docker.io"):
        keys.append("https://index.docker.io/v1/")
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                return _decode_auth(entry["auth"])
            except ValueError:
                return None
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    return None


class GCPolicy(_Strict):
    threshold: Size = parse_size("1000MB")


class RegistryClientConfig(_Strict):
    """How we talk to registries (not in upstream, whose client has no retries)."""

    max_retries: int = Field(default=5, ge=0, le=50)
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    timeout: float = Field(default=60.0, gt=0)
    upload_chunk_size: Size = 0  # 0: monolithic PUT; otherwise chunked PATCH uploads of this size


class ProviderConfig(_Strict):
    source: dict[str, SourceConfig] = {}
    work_dir: Path = Path("./work")
    gcpolicy: GCPolicy = GCPolicy()
    cache_size: int = Field(default=200, ge=0)
    cache_version: str = ""
    docker_config: Path | None = None
    registry: RegistryClientConfig = RegistryClientConfig()
    database: str = Field(default="", repr=False)
    """*new*: empty: tasks and the layer-cache index in SQLite under ``work_dir`` (one node); a
    ``postgresql://user:password@host:port/dbname`` DSN: both in that database, shared by every node."""

    @field_validator("source", mode="before")
    @classmethod
    def _empty_hosts(cls, value: Any) -> Any:
        # Upstream's sample configs list a host whose keys are all commented out: YAML reads it as null,
        # which Go decodes as an all-defaults struct.
        if isinstance(value, dict):
            return {host: {} if entry is None else entry for host, entry in value.items()}
        return value

    @field_validator("database")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not is_postgres_dsn(value):
            raise ValueError("must be empty (SQLite under work_dir) or a postgresql:// DSN")
        return value

    @field_validator("work_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        # Lets example configs keep their state in the user's home, out of the folder they live in.
        return value.expanduser()


class ServerConfig(_Strict):
    name: str = "API"
    host: str = "0.0.0.0"
    port: int = Field(default=2077, ge=0, le=65535)
    uds: str = ""
    api_token: str = Field(default="", repr=False)
    task_retention: float = Field(default=86400.0, gt=0)  # seconds finished tasks are kept
    shutdown_grace: float = Field(default=30.0, ge=0)  # seconds in-flight conversions may finish on stop
    task_lease: float = Field(default=30.0, gt=0)
    """*new*: seconds a node's claim on a running task lasts without a heartbeat (renewed every third of
    it). A task whose node died runs again, on another node or on the restarted one, once it expired."""
    node: str = ""
    """*new*: this node's id in task records (empty: the host name and a random suffix)."""

    @field_validator("port", mode="before")
    @classmethod
    def _port_from_string(cls, value: object) -> object:
        # Upstream's templates quote the port ("2077").
        return int(value) if isinstance(value, str) and value.isdigit() else value


class MetricConfig(_Strict):
    enabled: bool = False


class DriverConfig(_Strict):
    type: str
    config: dict[str, DriverOption] = {}


class Rule(_Strict):
    tag_suffix: str = ""
    cache_tag: str = ""


class ConverterConfig(_Strict):
    worker: int = Field(default=2, gt=0)
    harbor_annotation: bool = False  # accepted for compatibility; upstream no longer uses it either
    platforms: str = ""
    driver: DriverConfig
    rules: list[Rule] = []
    overwrite: bool = False
    """*new*: move a target tag even when it holds something this service did not make from the same
    source with the same driver (``accelctl convert --force``)."""
    verify: bool = False
    """*new*: check the converted image as ``accelctl check`` does before its tag moves; a failed check
    fails the conversion and tags nothing."""

    @property
    def platform_list(self) -> list[str]:
        return [p.strip() for p in self.platforms.split(",") if p.strip()]

    @property
    def tag_suffix(self) -> str:
        return next((r.tag_suffix for r in self.rules if r.tag_suffix), "")

    @property
    def cache_tag(self) -> str:
        return next((r.cache_tag for r in self.rules if r.cache_tag), "")


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    metric: MetricConfig = MetricConfig()
    provider: ProviderConfig = ProviderConfig()
    converter: ConverterConfig

    def source(self, host: str) -> SourceConfig | None:
        return self.provider.source.get(host)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
            near = difflib.get_close_matches(str(item["loc"][-1]), _known_keys(item["loc"][:-1]), n=1)
            if near:
                message += f" (did you mean {near[0]!r}?)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed at ``loc`` (a pydantic error location) of a Config, for spelling suggestions."""
    node: Any = Config
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return []
            node = field.annotation
        elif typing.get_origin(node) in (dict, list):
            node = typing.get_args(node)[-1]  # a host name or a list index: the values' model
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def parse_config(data: Any, origin: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe(exc)}") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file; relative ``work_dir`` is taken from the file's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    config = parse_config(data, str(path))
    work_dir = config.provider.work_dir
    if not work_dir.is_absolute():
        provider = config.provider.model_copy(update={"work_dir": (path.parent / work_dir).resolve()})
        config = config.model_copy(update={"provider": provider})
    return config
