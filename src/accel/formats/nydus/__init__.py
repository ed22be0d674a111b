"""Nydus RAFS v6 and v5: reading/validating bootstraps and blobs, building per-layer blobs, merging them.

* ``build_layer(src, dst, Options()) -> LayerBuild``: tar layer stream -> nydus blob with inlined bootstrap
  (RAFS v5 with ``Options(fs_version=5)``).
* ``build_ref_layer(gzip_src, dst, Options()) -> LayerBuild``: gzip tar layer -> OCI-ref (zran) blob, metadata
  only, its chunks read from the original layer.
* ``merge([(bootstrap, blob_id), ...]) -> bytes``: per-layer bootstraps -> image bootstrap (OCI whiteouts),
  in the RAFS version of the layers.
* ``read_chunk_dict(bootstrap) -> ChunkDict``: an image's chunks by digest, for ``build_layer(chunk_dict=)``.
* ``read_bootstrap(bytes) -> Bootstrap``, ``read_blob(bytes) -> BlobFile``, ``validate(...)``;
  ``read_bootstrap_v5`` for RAFS v5 (``reader_v5.to_tree_v5`` and ``writer_v5`` for its tree and layout).
* ``bootstrap_layer_tar(...)``: the ``image/image.boot`` + ``image/<hex>.blob.meta`` tar.
"""

from __future__ import annotations

from accel.formats.nydus.blob import (
    BlobFile,
    BlobMeta,
    blob_meta_file,
    extract_via_toc,
    read_blob,
    stripped_blob_id,
    verify_chunk_digests,
)
from accel.formats.nydus.builder import LayerBuild, Options, build_layer, check_chunk_dict
from accel.formats.nydus.chunkdict import (
    ChunkDict,
    bootstrap_blob_ids,
    bootstrap_from_layer_at,
    read_chunk_dict,
)
from accel.formats.nydus.describe import blob_layout, bootstrap_layout, file_records, file_tree
from accel.formats.nydus.merge import MetaBlob, merge
from accel.formats.nydus.packaging import bootstrap_from_layer, bootstrap_layer_tar
from accel.formats.nydus.reader import Bootstrap, read_bootstrap, read_file, to_tree
from accel.formats.nydus.reader_v5 import V5Bootstrap, read_bootstrap_v5
from accel.formats.nydus.validate import validate
from accel.formats.nydus.zran import build_ref_layer

__all__ = [
    "BlobFile",
    "BlobMeta",
    "Bootstrap",
    "ChunkDict",
    "LayerBuild",
    "MetaBlob",
    "Options",
    "V5Bootstrap",
    "blob_layout",
    "blob_meta_file",
    "bootstrap_blob_ids",
    "bootstrap_from_layer",
    "bootstrap_from_layer_at",
    "bootstrap_layer_tar",
    "bootstrap_layout",
    "build_layer",
    "build_ref_layer",
    "check_chunk_dict",
    "extract_via_toc",
    "file_records",
    "file_tree",
    "merge",
    "read_blob",
    "read_bootstrap",
    "read_bootstrap_v5",
    "read_chunk_dict",
    "read_file",
    "stripped_blob_id",
    "to_tree",
    "validate",
    "verify_chunk_digests",
]
