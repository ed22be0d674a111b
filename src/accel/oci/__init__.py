"""The OCI image model: references, platforms, digests, media types, manifests and image layouts."""

from accel.oci.layout import REF_NAME, OCILayout
from accel.oci.manifest import Descriptor, ImageConfig, Index, Manifest, encode_json, parse_manifest
from accel.oci.platform import Platform, PlatformMatcher, host_platform
from accel.oci.reference import LayoutReference, Reference, parse_image_ref

__all__ = [
    "REF_NAME",
    "Descriptor",
    "ImageConfig",
    "Index",
    "LayoutReference",
    "Manifest",
    "OCILayout",
    "Platform",
    "PlatformMatcher",
    "Reference",
    "encode_json",
    "host_platform",
    "parse_image_ref",
    "parse_manifest",
]
