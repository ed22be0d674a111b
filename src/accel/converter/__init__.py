"""The converter: resolve a source image, convert it with the configured driver, push the result."""

from typing import TYPE_CHECKING, Any

from accel.converter.pipeline import Converter
from accel.converter.progress import ConversionResult, Progress, SourceInspection
from accel.converter.rules import target_reference

if TYPE_CHECKING:
    from accel.converter.check import CheckReport, Finding, ImageReport


def __getattr__(name: str) -> Any:
    # The checker reads every format: imported when asked for, so a conversion does not pay for it.
    if name in ("CheckReport", "Finding", "ImageReport"):
        from accel.converter import check

        return getattr(check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckReport",
    "ConversionResult",
    "Converter",
    "Finding",
    "ImageReport",
    "Progress",
    "SourceInspection",
    "target_reference",
]
