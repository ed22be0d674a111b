"""Configs for tests: a Config for given registries and driver, and its YAML file for subprocesses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from accel.config import Config, SourceConfig, parse_config


def config_dict(
    work_dir: Path,
    sources: dict[str, SourceConfig],
    *,
    driver: str = "oci",
    driver_config: dict[str, str] | None = None,
    tag_suffix: str = "-oci",
    platforms: str = "",
    worker: int = 2,
    registry: dict[str, Any] | None = None,
    cache_tag: str = "",
    **extra: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "provider": {
            "work_dir": str(work_dir),
            "source": {host: src.model_dump(exclude_defaults=True) for host, src in sources.items()},
            "registry": {"backoff_initial": 0.05, "backoff_max": 0.5, "timeout": 30, **(registry or {})},
        },
        "converter": {
            "worker": worker,
            "platforms": platforms,
            "driver": {"type": driver, "config": driver_config or {}},
            "rules": [{"tag_suffix": tag_suffix}, *([{"cache_tag": cache_tag}] if cache_tag else [])],
        },
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        data.setdefault(section, {})[name] = value
    return data


def make_config(work_dir: Path, sources: dict[str, SourceConfig], **kwargs: Any) -> Config:
    return parse_config(config_dict(work_dir, sources, **kwargs))


def write_config(path: Path, work_dir: Path, sources: dict[str, SourceConfig], **kwargs: Any) -> Path:
    path.write_text(yaml.safe_dump(config_dict(work_dir, sources, **kwargs)))
    return path
