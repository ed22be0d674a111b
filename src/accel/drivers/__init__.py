"""Drivers: one thin adapter per output format behind the ``Driver`` interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from accel.config import DriverConfig
from accel.drivers.base import (
    Artifact,
    ConvertedImage,
    ConvertedLayer,
    Driver,
    DriverContext,
    LayerDriver,
    SourceImage,
)
from accel.drivers.oci import OCIDriver
from accel.errors import ConfigError

DriverFactory = Callable[[Mapping[str, str]], Driver]

_DRIVERS: dict[str, DriverFactory] = {
    OCIDriver.name: lambda options: OCIDriver(dict(options)),
}


def available_drivers() -> list[str]:
    return sorted(_DRIVERS)


def create_driver(config: DriverConfig) -> Driver:
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
    "LayerDriver",
    "SourceImage",
    "available_drivers",
    "create_driver",
]
