"""Drivers: one thin adapter per output format behind the ``Driver`` interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from accel.config import DriverConfig
from accel.drivers.base import (
    Artifact,
    ConvertedImage,
    ConvertedLayer,
    Driver,
    DriverContext,
    ImageLayer,
    PlainDriver,
    ReadAt,
    SourceImage,
)
from accel.drivers.estargz import EStargzDriver
from accel.drivers.nydus import NydusDriver
from accel.drivers.oci import OCIDriver
from accel.drivers.soci import SociDriver
from accel.drivers.zstdchunked import ZstdChunkedDriver
from accel.errors import ConfigError

DriverFactory = Callable[[Mapping[str, str]], Driver[Any]]


def _estargz(options: Mapping[str, str]) -> Driver[Any]:
    # Upstream selects zstd:chunked through the estargz driver; what it produced is the stargz flavour.
    if (options.get("compression") or "estargz") == "zstdchunked":
        return ZstdChunkedDriver(options, default_flavour="stargz")
    return EStargzDriver(options)


_DRIVERS: dict[str, DriverFactory] = {
    OCIDriver.name: OCIDriver,
    EStargzDriver.name: _estargz,
    ZstdChunkedDriver.name: ZstdChunkedDriver,
    NydusDriver.name: NydusDriver,
    SociDriver.name: SociDriver,
}


def available_drivers() -> list[str]:
    return sorted(_DRIVERS)


def create_driver(config: DriverConfig) -> Driver[Any]:
    """The driver named by ``converter.driver.type``, configured with ``converter.driver.config``."""
    factory = _DRIVERS.get(config.type)
    if factory is None:
        raise ConfigError(
            f"converter.driver.type: unsupported driver {config.type!r} "
            f"(available: {', '.join(available_drivers())})"
        )
    return factory(config.config)


__all__ = [
    "Artifact",
    "ConvertedImage",
    "ConvertedLayer",
    "Driver",
    "DriverContext",
    "ImageLayer",
    "PlainDriver",
    "ReadAt",
    "SourceImage",
    "available_drivers",
    "create_driver",
]
