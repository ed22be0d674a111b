"""``accelctl check --lazy PATH…``: read files of a converted image the way a lazy-pulling snapshotter
does, through each layer's index with ranged requests only, and count what that fetched.

Each path is looked up from the top layer down (the first layer that holds it is the one the merged tree
shows). What a layer's index costs and what a file then costs:

* eStargz and stargz-flavour zstd:chunked: the footer and the TOC, then the file's chunk members;
* containers/storage zstd:chunked: the footer, the manifest and the tar-split, then the file's frames;
* Nydus: the bootstrap layer (it is the image's whole metadata), then each chunk from its data blob;
* SOCI: the layer's zTOC, then the spans from the checkpoint before the file to its end;
* any other layer has no index: it is fetched whole, as a snapshotter without one must.

Every file read is checked against the digest the merged tree recorded for it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from accel.converter.repositories import ImageRepository
from accel.errors import AccelError, FormatError
from accel.formats import estargz, nydus, soci, zstdchunked
from accel.formats.chunked import BlobStream
from accel.formats.filetree import FileRecord
from accel.formats.layercodec import decompressed
from accel.formats.nydus import constants as nydus_constants
from accel.formats.soci.index import ANNOTATION_LAYER_DIGEST
from accel.formats.tar import TarReader, clean_path
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, Manifest

_SOCI_READ = 1 << 16  # soci-snapshotter fetches spans; a 64 KiB read-ahead stays within one


@dataclass(slots=True)
class Fetched:
    """Ranged requests made and bytes they returned."""

    requests: int = 0
    bytes: int = 0


class RangedBlob:
    """One blob of a repository read by ranges (a ``BlobReader``); ``count`` hears of every request."""

    def __init__(
        self, repository: ImageRepository, descriptor: Descriptor, count: Callable[[int], None]
    ) -> None:
        self._repository = repository
        self._digest = descriptor.digest
        self._size = descriptor.size
        self._count = count

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self._size - offset))
        if n == 0:
            return b""
        self._count(n)
        return self._repository.read_range(self._digest, offset, n)


#: Reads one file's content from an opened layer index (the path is absolute, as the tree keys it).
_FileReader = Callable[[str], bytes]


@dataclass(slots=True)
class LazyRead:
    """One file read lazily: where from, how much it cost, whether it matched the tree."""

    path: str
    layer: int | None
    kind: str
    size: int
    fetched: Fetched
    error: str | None = None


class LazyReader:
    """Reads files of one image manifest through its layers' indexes; each index is opened once, and
    what opening it fetched counts to the file that needed it first."""

    def __init__(
        self,
        repository: ImageRepository,
        manifest: Manifest,
        kinds: Sequence[str],
        ztocs: dict[str, Descriptor],
    ) -> None:
        self._repository = repository
        self._layers = list(manifest.layers)
        self._kinds = list(kinds)
        self._ztocs = ztocs
        self._indexes: dict[int, tuple[_FileReader, set[str]]] = {}
        self._referenced: dict[str, int] = {}  # digest -> size of blobs the image needs but does not list
        self._current = Fetched()
        self.total = Fetched()

    @property
    def image_bytes(self) -> int:
        """What a full pull would fetch: the layers, and the original layers OCI-ref blobs read from."""
        return sum(layer.size for layer in self._layers) + sum(self._referenced.values())

    def read(self, path: str, expected: FileRecord | None) -> LazyRead:
        path = "/" + clean_path(path)
        self._current = Fetched()
        result = LazyRead(path, None, "", 0, self._current)
        try:
            if expected is None:
                raise FormatError("not in the image's file tree", entry=path)
            if expected.type != "reg":
                raise FormatError(f"a {expected.type}, not a regular file", entry=path)
            position, read_file = self._provider(path)
            result.layer, result.kind = position, self._kind(position)
            data = read_file(path)
            result.size = len(data)
            if hashlib.sha256(data).hexdigest() != expected.sha256:
                raise FormatError("read lazily, the content differs from the layer's", entry=path)
        except AccelError as exc:
            result.error = exc.reason if isinstance(exc, FormatError) else exc.message
        return result

    def _kind(self, position: int) -> str:
        """The layer's format as a lazy reader sees it: a plain layer with a zTOC is read as SOCI."""
        return "soci" if self._layers[position].digest in self._ztocs else self._kinds[position]

    def _count(self, n: int) -> None:
        for fetched in (self._current, self.total):
            fetched.requests += 1
            fetched.bytes += n

    def _provider(self, path: str) -> tuple[int, _FileReader]:
        """The top-most layer holding ``path`` and the reader of its index."""
        if "nydus-bootstrap" in self._kinds:
            # The bootstrap is the merged tree of every layer: it alone says where a file's chunks are.
            position = self._kinds.index("nydus-bootstrap")
            return position, self._index(position)[0]
        for position in reversed(range(len(self._layers))):
            reader, names = self._index(position)
            if path in names:
                return position, reader
        raise FormatError("no layer's index holds it", entry=path)

    def _index(self, position: int) -> tuple[_FileReader, set[str]]:
        if position not in self._indexes:
            self._indexes[position] = self._open(position)
        return self._indexes[position]

    def _blob(self, descriptor: Descriptor) -> RangedBlob:
        return RangedBlob(self._repository, descriptor, self._count)

    def _open(self, position: int) -> tuple[_FileReader, set[str]]:
        """A layer's index: a reader of its files and the paths it holds (files, any type)."""
        layer, kind = self._layers[position], self._kinds[position]
        if kind in ("estargz", "zstdchunked-stargz"):
            opened = estargz.open_blob(self._blob(layer))
            return partial(estargz.read_file, opened), _rooted(e.name for e in opened.entries)
        if kind == "zstdchunked":
            storage = zstdchunked.open_storage_blob(self._blob(layer), dict(layer.annotations))
            return partial(zstdchunked.read_file, storage), _rooted(e["name"] for e in storage.entries)
        if kind == "nydus-bootstrap":
            whole = self._blob(layer).read_at(0, layer.size)
            bs = nydus.read_bootstrap(nydus.bootstrap_from_layer(decompressed(io.BytesIO(whole))))
            data_layers = {d.digest.split(":", 1)[1]: d for d in self._layers}
            for entry in bs.blobs:
                if entry.features & nydus_constants.BF_ZRAN and entry.blob_id not in data_layers:
                    self._referenced[entry.blob_id] = entry.compressed_size

            def meta(blob_index: int, offset: int, length: int) -> bytes:
                """An OCI-ref blob's metadata is in its Nydus layer, which the blob table names."""
                entry = bs.blobs[blob_index]
                holder = entry.blob_meta_digest.hex() if entry.features & nydus_constants.BF_SEPARATE else ""
                layer = data_layers.get(holder) or data_layers.get(entry.blob_id)
                if layer is None:
                    raise FormatError(f"blob {entry.blob_id} has no layer in the image for its metadata")
                return self._blob(layer).read_at(offset, length)

            def chunk(blob_index: int, offset: int, length: int) -> bytes:
                entry = bs.blobs[blob_index]
                layer = data_layers.get(entry.blob_id)
                if layer is None and entry.features & nydus_constants.BF_ZRAN:
                    # Its chunks are inflated from the original gzip layer, in the same repository.
                    layer = Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + entry.blob_id, entry.compressed_size)
                if layer is None:
                    raise FormatError(f"blob {entry.blob_id} is not a layer of the image")
                return self._blob(layer).read_at(offset, length)

            names = {p.decode("utf-8", "surrogateescape") for p, _ in bs.entries}
            metas: dict[int, nydus.BlobMeta] = {}
            return (lambda path: nydus.read_file(bs, path, chunk, metas, read_meta=meta)), names
        ztoc = self._ztocs.get(layer.digest)
        if ztoc is not None:
            self._count(ztoc.size)
            index = soci.read_ztoc(self._repository.read_blob(ztoc.digest))
            layer_file = io.BufferedReader(BlobStream(self._blob(layer)), _SOCI_READ)
            return (lambda path: soci.read_file(index, path, layer_file)), _rooted(m.name for m in index.toc)
        # No index: the whole layer, as a snapshotter without one must fetch it.
        files = _tar_files(self._blob(layer).read_at(0, layer.size))
        return files.__getitem__, set(files)


def _rooted(names: Iterable[str]) -> set[str]:
    return {"/" + clean_path(name) for name in names}


def _tar_files(layer: bytes) -> dict[str, bytes]:
    """Every path of a plain layer; regular files and hard links map to their content."""
    reader = TarReader(decompressed(io.BytesIO(layer)))
    out: dict[str, bytes] = {}
    for entry in reader:
        path = "/" + clean_path(entry.name)
        if entry.type in (b"0", b"\0", b"7"):
            out[path] = reader.read()
        elif entry.type == b"1" and "/" + clean_path(entry.linkname) in out:
            out[path] = out["/" + clean_path(entry.linkname)]
    return out


def ztocs_by_layer(indexes: Sequence[Manifest]) -> dict[str, Descriptor]:
    return {
        z.annotations[ANNOTATION_LAYER_DIGEST]: z
        for index in indexes
        for z in index.layers
        if z.media_type == soci.ZTOC_MEDIA_TYPE and ANNOTATION_LAYER_DIGEST in z.annotations
    }
