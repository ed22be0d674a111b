"""Checking a converted image (``accelctl check``, ``converter.verify``): every layer through its format's
reader, and the file tree the layers add up to against the source's.

A layer's format is recognised from its descriptor (media type and annotations), not from the driver
that claims to have made it, so an image made by another tool is checked the same way. What each format
is checked for:

* eStargz and stargz-flavour zstd:chunked: footer, TOC against ``toc.digest``, every chunk's digest, the
  uncompressed size annotation, the diff_id;
* containers/storage zstd:chunked: the manifest checksum, every chunk, the tar-split reassembling the
  original tar, the diff_id;
* Nydus: every data blob (sections, chunk info, chunk digests), the bootstrap (superblocks, inodes, blob
  table naming exactly the image's data blobs, chunk table against each blob);
* SOCI: every zTOC of the SOCI index re-inflated span by span against its layer, the TOC against the
  layer's tar entries;
* any other layer: its diff_id.

Blobs are read from the content store, pulled into it under a lease when missing, so a check right after
a conversion reads what the conversion wrote without downloading it again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, BinaryIO

from accel.content import ContentStore, Lease
from accel.converter.context import ConversionIO
from accel.converter.lazy import Fetched, LazyRead, LazyReader, ztocs_by_layer
from accel.converter.progress import Counters, ResolvedSource
from accel.converter.repositories import ImageRepository, RegistryRepository, open_repository
from accel.errors import AccelError, ConversionError, FormatError
from accel.formats import estargz, nydus, soci, zstdchunked
from accel.formats.chunked import FileBlob
from accel.formats.filetree import FileTree, differences
from accel.formats.layercodec import TeeStream, decompressed
from accel.formats.tar import clean_path
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.manifest import Descriptor, ImageConfig, Index, Manifest, parse_manifest
from accel.oci.platform import Platform
from accel.oci.reference import LayoutReference, parse_image_ref
from accel.registry import RegistryClient

_ESTARGZ_ADDED = {
    "/" + estargz.TOC_NAME,
    "/" + estargz.PREFETCH_LANDMARK,
    "/" + estargz.NO_PREFETCH_LANDMARK,
}
_READ = 1 << 20
_SOCI_INDEXES = frozenset({mt.SOCI_INDEX_V1, mt.SOCI_INDEX_V2})
_MANIFEST_TYPES = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})
_SHOWN_DIFFERENCES = 10


@dataclass(slots=True)
class Finding:
    """One check of one subject: a layer (``layer`` is its position), the image's tree or the image."""

    subject: str
    check: str
    ok: bool
    detail: str = ""
    layer: int | None = None
    entry: str | None = None

    def describe(self) -> str:
        where = f", entry {self.entry}" if self.entry else ""
        return f"{self.subject}: {self.check}: {self.detail}{where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "check": self.check,
            "ok": self.ok,
            "detail": self.detail,
            "layer": self.layer,
            "entry": self.entry,
        }


@dataclass
class ImageReport:
    """The findings for one image manifest (one platform)."""

    manifest_digest: str
    platform: str | None
    source: str | None = None
    findings: list[Finding] = field(default_factory=list)
    #: ``--lazy``: each file read through the layers' indexes, what all of it fetched, the layers' size.
    lazy: list[LazyRead] = field(default_factory=list)
    lazy_total: Fetched = field(default_factory=Fetched)
    image_bytes: int = 0

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest_digest,
            "platform": self.platform,
            "source": self.source,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            **({"lazy": self._lazy_dict()} if self.lazy else {}),
        }

    def _lazy_dict(self) -> dict[str, Any]:
        return {
            "fetched_bytes": self.lazy_total.bytes,
            "requests": self.lazy_total.requests,
            "image_bytes": self.image_bytes,
            "files": [
                {
                    "path": read.path,
                    "layer": read.layer,
                    "format": read.kind,
                    "size": read.size,
                    "fetched_bytes": read.fetched.bytes,
                    "requests": read.fetched.requests,
                    "error": read.error,
                }
                for read in self.lazy
            ],
        }


@dataclass
class CheckReport:
    """What ``accelctl check`` prints: one ``ImageReport`` per platform manifest of the target."""

    target: str
    target_digest: str
    images: list[ImageReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.images) and all(image.ok for image in self.images)

    @property
    def failures(self) -> list[Finding]:
        return [f for image in self.images for f in image.findings if not f.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "target_digest": self.target_digest,
            "ok": self.ok,
            "images": [image.to_dict() for image in self.images],
        }


@dataclass(frozen=True, slots=True)
class CheckSource:
    """Where the tree a converted image must equal comes from."""

    repository: ImageRepository
    manifest: Manifest
    reference: str


def is_soci_index(manifest: Manifest) -> bool:
    return (manifest.artifact_type or manifest.config.media_type) in _SOCI_INDEXES


def layer_format(layer: Descriptor) -> str:
    """The format of a layer, told by its descriptor: ``estargz``, ``zstdchunked-stargz``,
    ``zstdchunked``, ``nydus-blob``, ``nydus-bootstrap`` or ``oci`` (a plain tar, gzip or zstd layer)."""
    marks = layer.annotations
    if layer.media_type == mt.NYDUS_BLOB:
        return "nydus-blob"
    if marks.get(keys.NYDUS_BOOTSTRAP) == "true":
        return "nydus-bootstrap"
    if keys.STARGZ_TOC_DIGEST in marks:
        return "zstdchunked-stargz" if mt.layer_compression(layer.media_type) == "zstd" else "estargz"
    if zstdchunked.MANIFEST_CHECKSUM_KEY in marks:
        return "zstdchunked"
    return "oci"


class ImageChecker:
    """Checks converted image manifests held in ``repository``; blobs go through ``store`` under ``lease``."""

    def __init__(self, store: ContentStore, lease: Lease, scratch: Any) -> None:
        self._store = store
        self._lease = lease
        self._scratch = scratch

    def _io(self, repository: ImageRepository) -> ConversionIO:
        return ConversionIO(self._store, self._lease, repository, {}, Counters(None), None, self._scratch)

    @contextmanager
    def _open(self, repository: ImageRepository, blob: Descriptor) -> Iterator[BinaryIO]:
        self._io(repository).ensure_local(blob)
        with self._store.open(blob.digest) as f:
            yield f

    # ------------------------------------------------------------------ one image

    def check_image(
        self,
        repository: ImageRepository,
        manifest: Manifest,
        digest: str,
        *,
        soci_indexes: Sequence[Manifest] = (),
        source: CheckSource | None = None,
        lazy: Sequence[str] = (),
        config: ImageConfig | None = None,
    ) -> ImageReport:
        """``config``: the manifest's config when the caller has read it already."""
        if config is None:
            config = ImageConfig.from_json(repository.read_blob(manifest.config.digest))
        platform = str(config.platform()) if config.os else None
        report = ImageReport(digest, platform, source.reference if source else None)
        diff_ids = config.diff_ids
        if len(diff_ids) != len(manifest.layers):
            report.findings.append(
                Finding(
                    "image",
                    "config",
                    False,
                    f"config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers",
                )
            )
            return report
        ztocs = ztocs_by_layer(soci_indexes)
        unmatched = dict(ztocs)  # what is left once every layer took its zTOC
        kinds = [layer_format(layer) for layer in manifest.layers]
        tree = FileTree()
        nydus_blobs: dict[str, nydus.BlobFile] = {}
        for position, (layer, diff_id, kind) in enumerate(zip(manifest.layers, diff_ids, kinds, strict=True)):
            subject = f"layer {position} {layer.digest}"
            finding = Finding(subject, kind, True, layer=position)
            try:
                finding.detail = self._check_layer(repository, layer, kind, diff_id, tree, nydus_blobs)
            except AccelError as exc:
                finding.ok, finding.detail, finding.entry = False, _reason(exc), _entry_of(exc)
            report.findings.append(finding)
            ztoc = unmatched.pop(layer.digest, None)
            if ztoc is not None:
                report.findings.append(self._check_ztoc(repository, layer, ztoc, position))
        for layer_digest in unmatched:
            report.findings.append(
                Finding("soci index", "soci", False, f"a zTOC names {layer_digest}, not a layer of the image")
            )
        if source is not None and report.ok:
            report.findings.append(self._compare(source, tree))
        if lazy and report.ok:
            reader = LazyReader(repository, manifest, kinds, ztocs)
            report.lazy = [reader.read(path, tree.files.get("/" + clean_path(path))) for path in lazy]
            report.lazy_total, report.image_bytes = reader.total, reader.image_bytes
            report.findings.extend(_lazy_findings(report))
        return report

    def _check_layer(
        self,
        repository: ImageRepository,
        layer: Descriptor,
        kind: str,
        diff_id: str,
        tree: FileTree,
        nydus_blobs: dict[str, nydus.BlobFile],
    ) -> str:
        with self._open(repository, layer) as raw:
            if kind in ("estargz", "zstdchunked-stargz"):
                result = estargz.verify(FileBlob(raw), layer.annotations[keys.STARGZ_TOC_DIGEST])
                size = layer.annotations.get(estargz.UNCOMPRESSED_SIZE_ANNOTATION)
                if size is not None and int(size) != result.uncompressed_size:
                    raise FormatError(
                        f"{estargz.UNCOMPRESSED_SIZE_ANNOTATION} says {size}, "
                        f"the layer is {result.uncompressed_size} bytes"
                    )
                detail = f"TOC and {result.chunks} chunks verified"
            elif kind == "zstdchunked":
                checksum = layer.annotations[zstdchunked.MANIFEST_CHECKSUM_KEY]
                result = zstdchunked.verify_storage(
                    FileBlob(raw), checksum, annotations=dict(layer.annotations)
                )
                detail = f"manifest, tar-split and {result.chunks} chunks verified"
            elif kind == "nydus-blob":
                # Chunk digests need the bootstrap's compressor and digester: checked with the bootstrap.
                blob = nydus.read_blob(raw.read())
                original = layer.annotations.get(keys.NYDUS_REF)
                if original is not None and blob.is_zran:
                    # An OCI-ref blob: its chunks are read by ranges from the original layer, whose digest
                    # is also the blob id the bootstrap names.
                    blob.original = functools.partial(repository.read_range, original)
                    nydus_blobs[original.split(":", 1)[1]] = blob
                    detail = f"sections and {len(blob.zran.contexts)} zran contexts into {original} verified"
                else:
                    nydus_blobs[layer.digest.split(":", 1)[1]] = blob
                    detail = f"sections and {len(blob.chunks)} chunk infos verified"
            else:
                detail = ""
            raw.seek(0)
            plain, got = self._apply(raw, kind, tree, nydus_blobs)
        if got != diff_id:
            raise FormatError(f"diff_id is {got}, the config says {diff_id}")
        if kind == "nydus-bootstrap":
            return plain
        return detail or "diff_id verified"

    def _apply(
        self, raw: BinaryIO, kind: str, tree: FileTree, nydus_blobs: dict[str, nydus.BlobFile]
    ) -> tuple[str, str]:
        """Add the layer to ``tree``; returns a detail line and the layer's diff_id."""
        hasher = hashlib.sha256()
        # A nydus blob is stored as it is: sniffing it would take a first chunk's zstd frame for the layer's.
        stream = TeeStream(raw if kind == "nydus-blob" else decompressed(raw), hasher.update, "layer")
        detail = ""
        if kind == "nydus-blob":
            pass  # its files reach the tree through the bootstrap
        elif kind == "nydus-bootstrap":
            detail = self._nydus_tree(stream, tree, nydus_blobs)
        else:
            tree.apply(stream, skip=_ESTARGZ_ADDED.__contains__ if kind != "oci" else None)
        while stream.read(_READ):
            pass
        return detail, "sha256:" + hasher.hexdigest()

    def _nydus_tree(self, stream: TeeStream, tree: FileTree, blobs: dict[str, nydus.BlobFile]) -> str:
        bs = nydus.validate(nydus.bootstrap_from_layer(stream), dict(blobs))
        named = [entry.blob_id for entry in bs.blobs]
        # A layer without file data (only whiteouts, directories, links) has a blob with no chunks, which
        # the merged bootstrap leaves out; every blob with data must be in it, and only the image's blobs.
        with_data = {blob_id for blob_id, blob in blobs.items() if blob.chunks}
        if not with_data <= set(named) <= set(blobs):
            raise FormatError(
                f"the bootstrap names blobs {', '.join(named) or 'none'}, "
                f"the image's data layers are {', '.join(blobs) or 'none'}"
            )
        tree.files = nydus.file_records(bs, [blobs[blob_id] for blob_id in named])
        return f"bootstrap of {len(bs.entries)} entries over {len(named)} blobs verified"

    def _check_ztoc(
        self, repository: ImageRepository, layer: Descriptor, ztoc: Descriptor, position: int
    ) -> Finding:
        finding = Finding(f"layer {position} {layer.digest}", "soci", True, layer=position)
        try:
            data = repository.read_blob(ztoc.digest)
            with self._open(repository, layer) as raw:
                checked = soci.verify_ztoc(data, raw, layer_digest=layer.digest)
            finding.detail = f"zTOC {ztoc.digest}: {checked.spans} spans, {checked.entries} entries verified"
        except AccelError as exc:
            finding.ok, finding.detail, finding.entry = (
                False,
                f"zTOC {ztoc.digest}: {_reason(exc)}",
                _entry_of(exc),
            )
        return finding

    def _compare(self, source: CheckSource, converted: FileTree) -> Finding:
        expected = FileTree()
        for layer in source.manifest.layers:
            with self._open(source.repository, layer) as raw:
                stream = decompressed(raw)
                expected.apply(stream)
        found = list(islice(differences(expected.files, converted.files), _SHOWN_DIFFERENCES))
        if not found:
            return Finding("tree", "source", True, f"{len(expected.files)} paths equal {source.reference}")
        first = found[0]
        return Finding(
            "tree",
            "source",
            False,
            f"differs from {source.reference}: " + "; ".join(d.describe() for d in found),
            entry=first.path,
        )


def _lazy_findings(report: ImageReport) -> list[Finding]:
    out = []
    for read in report.lazy:
        where = f"through layer {read.layer} ({read.kind})" if read.layer is not None else "in no layer"
        cost = _fetched(read.fetched)
        if read.error is None:
            finding = Finding(
                f"lazy {read.path}", "lazy", True, f"{read.size} bytes {where}: {cost}", read.layer
            )
        else:
            detail = f"{read.error} ({where}; {cost})"
            finding = Finding(f"lazy {read.path}", "lazy", False, detail, read.layer, read.path)
        out.append(finding)
    share = 100 * report.lazy_total.bytes / report.image_bytes if report.image_bytes else 0.0
    out.append(
        Finding(
            "lazy",
            "lazy",
            all(read.error is None for read in report.lazy),
            f"{len(report.lazy)} files: {_fetched(report.lazy_total)}, "
            f"{share:.1f} % of the image's {report.image_bytes} layer bytes",
        )
    )
    return out


def _fetched(fetched: Fetched) -> str:
    plural = "" if fetched.requests == 1 else "s"
    return f"{fetched.bytes} bytes in {fetched.requests} ranged request{plural}"


def _reason(exc: AccelError) -> str:
    """The error without the layer and entry it names: a finding shows those in fields of their own."""
    return exc.reason if isinstance(exc, FormatError) else exc.message


def _entry_of(exc: AccelError) -> str | None:
    return exc.entry if isinstance(exc, FormatError) else None


def check_reference(
    client: RegistryClient,
    checker: ImageChecker,
    target: ResolvedSource,
    *,
    source: ResolvedSource | None = None,
    compare: bool = True,
    lazy: Sequence[str] = (),
) -> CheckReport:
    """Check every image manifest ``target`` names (each platform of an index). The tree is compared with
    ``source`` when given, else with the source our annotations name (``compare=False``: not at all);
    the ``lazy`` paths are then read through the layers' indexes with ranged requests."""
    ref = parse_image_ref(target.reference)
    repository = open_repository(ref, client)
    report = CheckReport(target.reference, target.digest)
    document = parse_manifest(target.data, target.media_type)
    for manifest, digest in _image_manifests(repository, document, target.digest):
        config = ImageConfig.from_json(repository.read_blob(manifest.config.digest))
        platform = config.platform() if config.os else None
        sources = _source_for(client, manifest, platform, source) if compare else None
        indexes = _soci_indexes(client, repository, manifest, digest)
        report.images.append(
            checker.check_image(
                repository, manifest, digest, soci_indexes=indexes, source=sources, lazy=lazy, config=config
            )
        )
    if not report.images:
        report.images.append(
            ImageReport(
                target.digest, None, findings=[Finding("image", "manifest", False, "no image manifest")]
            )
        )
    return report


def _image_manifests(
    repository: ImageRepository, document: Manifest | Index, digest: str
) -> list[tuple[Manifest, str]]:
    if isinstance(document, Manifest):
        return [(document, digest)]
    out = []
    for entry in document.manifests:
        if entry.artifact_type in _SOCI_INDEXES or entry.media_type not in _MANIFEST_TYPES:
            continue
        data, media_type, found = repository.get_manifest(entry.digest)
        child = parse_manifest(data, media_type)
        if isinstance(child, Manifest) and not is_soci_index(child):
            out.append((child, found))
    return out


def _soci_indexes(
    client: RegistryClient, repository: ImageRepository, manifest: Manifest, digest: str
) -> list[Manifest]:
    """The SOCI indexes of an image: v2 names its index in an annotation, v1 indexes are referrers."""
    digests = []
    if keys.SOCI_INDEX_DIGEST in manifest.annotations:
        digests.append(manifest.annotations[keys.SOCI_INDEX_DIGEST])
    if isinstance(repository, RegistryRepository):
        for artifact_type in sorted(_SOCI_INDEXES):
            found = client.referrers(repository.host, repository.repository, digest, artifact_type)
            digests += [
                m["digest"] for m in found.get("manifests", []) if m.get("artifactType") == artifact_type
            ]
    out = []
    for index_digest in dict.fromkeys(digests):
        data, media_type, _ = repository.get_manifest(index_digest)
        index = parse_manifest(data, media_type)
        if isinstance(index, Manifest) and is_soci_index(index):
            out.append(index)
    return out


def _source_for(
    client: RegistryClient, manifest: Manifest, wanted: Platform | None, given: ResolvedSource | None
) -> CheckSource | None:
    """The source image of one converted manifest: the one ``given`` names for its platform, else the one
    our annotations record (None when neither says)."""
    reference = given.reference if given is not None else manifest.annotations.get(keys.SOURCE_REFERENCE)
    if not reference:
        return None
    repository = open_repository(parse_image_ref(reference), client)
    if given is not None:
        data, media_type, digest = given.data, given.media_type, given.digest
    else:
        recorded = manifest.annotations.get(keys.SOURCE_DIGEST)
        data, media_type, digest = repository.get_manifest(recorded or _tag_of(reference))
    document = parse_manifest(data, media_type)
    if isinstance(document, Index):
        # A multi-platform source: the entry our annotations name, else the converted image's platform.
        recorded = manifest.annotations.get(keys.SOURCE_DIGEST)
        match = [e for e in document.manifests if e.digest == recorded] or [
            e for e in document.manifests if wanted is not None and e.platform == wanted
        ]
        if not match:
            raise ConversionError(f"{reference} has no manifest for {wanted or 'this image'}")
        data, media_type, digest = repository.get_manifest(match[0].digest)
        document = parse_manifest(data, media_type)
    if not isinstance(document, Manifest):
        raise ConversionError(f"{reference}: expected an image manifest")
    return CheckSource(repository, document, f"{reference}@{digest}" if "@" not in reference else reference)


def _tag_of(reference: str) -> str:
    ref = parse_image_ref(reference)
    return ref.tag or "" if isinstance(ref, LayoutReference) else ref.reference
