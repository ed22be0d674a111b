"""The converter: resolve a source image, convert it with the configured driver, push the result."""

from accel.converter.check import CheckReport, Finding, ImageReport
from accel.converter.pipeline import Converter
from accel.converter.progress import ConversionResult, Progress, SourceInspection
from accel.converter.rules import target_reference

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
