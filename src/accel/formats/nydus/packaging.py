"""The bootstrap layer: ``image/image.boot`` plus one ``image/<hex>.blob.meta`` per layer (nydus-snapshotter's
``pkg/converter``)."""

from __future__ import annotations

from collections.abc import Sequence

from accel.errors import FormatError
from accel.formats.streams import ByteSource
from accel.formats.tar import TarReader, clean_path
from accel.formats.tarwriter import END_OF_ARCHIVE, GoHeader, encode_header, padding

BOOTSTRAP_NAME = "image/image.boot"


def bootstrap_layer_tar(bootstrap: bytes, blob_metas: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """The uncompressed tar nydus-snapshotter's ``packToTar`` writes (the caller gzips it).

    ``blob_metas`` holds ``(layer digest hex, blob.meta bytes)`` in layer order; layers without data have
    no blob.meta and are left out by the caller.
    """
    parts = [encode_header(GoHeader(name="image", typeflag=b"5", mode=0o755))]
    files = [("image.boot", bootstrap)] + [(f"{hex_id}.blob.meta", meta) for hex_id, meta in blob_metas]
    for name, data in files:
        if "/" in name or not name:
            raise FormatError(f"bad bootstrap layer file name {name!r}", entry=name)
        parts.append(encode_header(GoHeader(name=f"image/{name}", mode=0o444, size=len(data))))
        parts.append(data)
        parts.append(padding(len(data)))
    parts.append(END_OF_ARCHIVE)
    return b"".join(parts)


def bootstrap_from_layer(tar: ByteSource) -> bytes:
    """The bootstrap in a bootstrap layer (``tar``: the layer, uncompressed), where nydus-snapshotter
    looks for it."""
    reader = TarReader(tar)
    for entry in reader:
        if clean_path(entry.name) == BOOTSTRAP_NAME:
            return reader.read()
    raise FormatError(f"the bootstrap layer has no {BOOTSTRAP_NAME}")
