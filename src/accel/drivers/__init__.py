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
    OpenedImage,
    PlainDriver,
    ReadAt,
    SourceImage,
)
from accel.errors import ConfigError

DriverFactory = Callable[[Mapping[str, str]], Driver[Any]]


# Each driver's module (and the format library under it) is imported only when that driver is made:
# a one-time `accelctl convert` pays for the format it converts to, not for all five.
def _oci(options: Mapping[str, str]) -> Driver[Any]:
    from accel.drivers.oci import OCIDriver

    return OCIDriver(options)


def _estargz(options: Mapping[str, str]) -> Driver[Any]:
    # Upstream selects zstd:chunked through the estargz driver; what it produced is the stargz flavour.
    if (options.get("compression") or "estargz") == "zstdchunked":
        from accel.drivers.zstdchunked import ZstdChunkedDriver

        return ZstdChunkedDriver(options, default_flavour="stargz")
    from accel.drivers.estargz import EStargzDriver

    return EStargzDriver(options)


def _zstdchunked(options: Mapping[str, str]) -> Driver[Any]:
    from accel.drivers.zstdchunked import ZstdChunkedDriver

    return ZstdChunkedDriver(options)


def _nydus(options: Mapping[str, str]) -> Driver[Any]:
    from accel.drivers.nydus import NydusDriver

    return NydusDriver(options)


def _soci(options: Mapping[str, str]) -> Driver[Any]:
    from accel.drivers.soci import SociDriver

    return SociDriver(options)


_DRIVERS: dict[str, DriverFactory] = {
    "oci": _oci,
    "estargz": _estargz,
    "zstdchunked": _zstdchunked,
    "nydus": _nydus,
    "soci": _soci,
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
    "OpenedImage",
    "PlainDriver",
    "ReadAt",
    "SourceImage",
    "available_drivers",
    "create_driver",
]
