"""SOCI (Seekable OCI) format library: zTOCs, checkpoints, verification and index manifests.

Knows nothing of registries: layer streams and descriptors in, bytes and OCI documents out. What it writes
follows soci-snapshotter's sources: ``ztoc/ztoc.go``, ``ztoc/toc_builder.go`` and
``ztoc/compression/gzip_zinfo.go`` (zTOC, TOC, checkpoints), ``ztoc/fbs/ztoc.fbs`` (the flatbuffer),
``soci/soci_index.go`` and ``soci/soci_convert.go`` (index manifests, the SOCI-enabled image).

* :func:`build_ztoc` reads a gzip or uncompressed tar layer once (streaming) and returns a :class:`Ztoc`
  byte-identical to soci-snapshotter's ``ztoc`` package (with TZ=UTC): ``.to_bytes()``, ``.digest``,
  ``.size``.
* :func:`read_ztoc` decodes one; :func:`verify_ztoc` checks a zTOC against its layer; :func:`extract` reads
  uncompressed bytes through the checkpoints, :func:`read_file` one file's.
* :mod:`accel.formats.soci.index` builds the v1/v2 SOCI index manifests and the v2 SOCI-enabled image as
  :mod:`accel.oci.manifest` documents (``Descriptor``, ``Manifest``, ``Index``, ``Platform``).
"""

from accel.formats.soci.builder import (
    DEFAULT_BUILD_TOOL_IDENTIFIER,
    DEFAULT_MIN_LAYER_SIZE,
    DEFAULT_SPAN_SIZE,
    build_ztoc,
)
from accel.formats.soci.extract import extract, read_file
from accel.formats.soci.index import (
    EMPTY_CONFIG,
    EMPTY_CONFIG_DIGEST,
    INDEX_V1,
    INDEX_V2,
    LayerPlan,
    convert_manifest,
    layer_compression,
    plan_layers,
    referrers_index,
    should_disable_xattrs,
    soci_enabled_index,
    soci_index_descriptor,
    soci_index_manifest,
    ztoc_descriptor,
)
from accel.formats.soci.toc import FileMetadata
from accel.formats.soci.verify import VerifyReport, verify_ztoc
from accel.formats.soci.ztoc import GZIP, UNCOMPRESSED, ZTOC_MEDIA_TYPE, Ztoc, read_ztoc
from accel.formats.zran import library_name as inflate_library

__all__ = [
    "DEFAULT_BUILD_TOOL_IDENTIFIER",
    "DEFAULT_MIN_LAYER_SIZE",
    "DEFAULT_SPAN_SIZE",
    "EMPTY_CONFIG",
    "EMPTY_CONFIG_DIGEST",
    "GZIP",
    "INDEX_V1",
    "INDEX_V2",
    "UNCOMPRESSED",
    "ZTOC_MEDIA_TYPE",
    "FileMetadata",
    "LayerPlan",
    "VerifyReport",
    "Ztoc",
    "build_ztoc",
    "convert_manifest",
    "extract",
    "inflate_library",
    "layer_compression",
    "plan_layers",
    "read_file",
    "read_ztoc",
    "referrers_index",
    "should_disable_xattrs",
    "soci_enabled_index",
    "soci_index_descriptor",
    "soci_index_manifest",
    "verify_ztoc",
    "ztoc_descriptor",
]
