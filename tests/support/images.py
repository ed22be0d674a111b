"""Test images, built here (never downloaded) into OCI image layout directories with accel.oci.layout.

* :func:`build_rich_image`: three layers covering what converters must carry — hardlinks, symlinks, text
  and binary xattrs, char/block devices, a fifo, zero and fractional mtimes, 150-byte and non-ASCII names
  (the base layer is :func:`tests.support.layers.edge_layer`), a 16 MiB mostly-zero file, file and
  directory whiteouts and an opaque directory. ``media="docker"`` gives the Docker schema2 variant;
  ``payload_size`` adds pseudo-random files so a benchmark can build a big image.
* :func:`build_multiplatform_image`: an index with linux/amd64 and linux/arm64 images of different content.
* :func:`build_simple_image`: one small layer from a ``{path: bytes}`` dict.
* :func:`push_layout`: ``skopeo copy oci:<dir>:<tag> docker://<dest>`` into a test registry.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, cast

import zstandard

from accel.oci import mediatypes as mt
from accel.oci.digest import Digester
from accel.oci.layout import OCILayout
from accel.oci.manifest import Descriptor, ImageConfig, Index, Manifest
from accel.oci.platform import Platform
from tests.support import layers as edge

MIB = 1 << 20
BIG_ZERO_FILE = "app/zeros.bin"
BIG_ZERO_SIZE = 16 * MIB
Compression = Literal["gzip", "zstd", "none"]
Media = Literal["oci", "docker"]

_LAYER_TYPES = {
    ("oci", "gzip"): mt.OCI_LAYER_GZIP,
    ("oci", "zstd"): mt.OCI_LAYER_ZSTD,
    ("oci", "none"): mt.OCI_LAYER,
    ("docker", "gzip"): mt.DOCKER_LAYER_GZIP,
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
}


@dataclass
class BuiltLayer:
    media_type: str
    digest: str
    size: int
    diff_id: str
    uncompressed_size: int

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size)


@dataclass
class BuiltManifest:
    descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig
    layers: list[BuiltLayer]
    platform: Platform


@dataclass
class BuiltImage:
    """What a builder wrote: ``descriptor`` is the tagged manifest or index."""

    layout: Path
    tag: str
    descriptor: Descriptor
    images: list[BuiltManifest] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def is_index(self) -> bool:
        return self.descriptor.media_type in mt.INDEXES


# --- tar writing ---------------------------------------------------------------------------------------


def _entry(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes | None = None,
    *,
    stream: BinaryIO | None = None,
    size: int = 0,
    mode: int | None = None,
    mtime: float = 1700000000,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.mtime = mtime
    info.linkname = link
    if kind == tarfile.REGTYPE:
        if data is not None:
            stream, size = io.BytesIO(data), len(data)
        info.size = size
        tar.addfile(info, stream)
    else:
        tar.addfile(info)


class _ZeroFile(io.RawIOBase):
    """``size`` bytes, zero except a few marker blocks (so the file is mostly sparse-looking)."""

    def __init__(self, size: int) -> None:
        self._size, self._pos = size, 0
        self._markers = {0: b"HEAD", size // 2: b"MIDDLE", max(size - 4, 0): b"TAIL"}

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._size - self._pos)
        chunk = bytearray(n)
        for offset, mark in self._markers.items():
            lo, hi = max(offset, self._pos), min(offset + len(mark), self._pos + n)
            if lo < hi:
                chunk[lo - self._pos : hi - self._pos] = mark[lo - offset : hi - offset]
        buffer[:n] = chunk
        self._pos += n
        return n


def zero_file_bytes(size: int = BIG_ZERO_SIZE) -> bytes:
    """The content of the mostly-zero file (for comparisons)."""
    return _ZeroFile(size).read()


def _app_layer(
    out: BinaryIO, fmt: int, big_zero_size: int, payload_size: int, payload_file_size: int
) -> None:
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        _entry(tar, "app/", tarfile.DIRTYPE)
        _entry(tar, "app/README", data=b"the application layer\n")
        _entry(tar, "app/remove-me.txt", data=b"deleted by the next layer\n")
        _entry(tar, "app/gone/", tarfile.DIRTYPE)
        _entry(tar, "app/gone/inside.txt", data=b"directory deleted by the next layer\n")
        _entry(tar, "app/opaque/", tarfile.DIRTYPE)
        _entry(tar, "app/opaque/a.txt", data=b"a (hidden by the opaque marker)\n")
        _entry(tar, "app/opaque/b.txt", data=b"b (hidden by the opaque marker)\n")
        _entry(tar, "app/hardlink-to-readme", tarfile.LNKTYPE, link="app/README")
        _entry(tar, "app/symlink-abs", tarfile.SYMTYPE, link="/etc/hostname", mode=0o777)
        _entry(tar, BIG_ZERO_FILE, stream=cast(BinaryIO, _ZeroFile(big_zero_size)), size=big_zero_size)
        # Whiteout of a file of the base layer (tests.support.layers.edge_layer).
        _entry(tar, "times/.wh.zero", data=b"")
        if payload_size:
            _entry(tar, "app/payload/", tarfile.DIRTYPE)
            remaining, n = payload_size, 0
            while remaining > 0:
                size = min(payload_file_size, remaining)
                _entry(tar, f"app/payload/{n:05d}.bin", data=edge.payload(size, 1000 + n))
                remaining -= size
                n += 1


def _changes_layer(out: BinaryIO, fmt: int) -> None:
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        _entry(tar, "app/", tarfile.DIRTYPE, mtime=1700000100)
        _entry(tar, "app/.wh.remove-me.txt", data=b"")
        _entry(tar, "app/.wh.gone", data=b"")
        _entry(tar, "app/opaque/", tarfile.DIRTYPE, mtime=1700000100)
        _entry(tar, "app/opaque/.wh..wh..opq", data=b"")
        _entry(tar, "app/opaque/c.txt", data=b"c survives the opaque marker\n")
        _entry(tar, "etc/", tarfile.DIRTYPE)
        _entry(tar, "etc/hostname", data=b"changed in the top layer\n", mtime=1700000100.25)
        _entry(tar, "app/r\u00e9sum\u00e9-\u6587\u4ef6.txt", data=b"non-ASCII name in the top layer\n")


# --- blobs ---------------------------------------------------------------------------------------------


class _Tee(io.RawIOBase):
    """A write-only sink that hashes what passes (the diff_id) and forwards it to a compressor."""

    def __init__(self, sink: BinaryIO) -> None:
        self.digester = Digester()
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.digester.update(data)
        self._sink.write(data)
        return len(data)

    def tell(self) -> int:
        return self.digester.size


def _write_layer(
    layout: OCILayout,
    media: Media,
    compression: Compression,
    write_tar: Callable[[BinaryIO], object],
    level: int,
) -> BuiltLayer:
    """Run ``write_tar(stream)``, compress on the fly and ingest the result into the layout."""
    media_type = _LAYER_TYPES[(media, compression)]
    with tempfile.TemporaryFile(dir=layout.path) as tmp:
        if compression == "gzip":
            gz = gzip.GzipFile(fileobj=tmp, mode="wb", compresslevel=level, mtime=0)
            tee = _Tee(cast(BinaryIO, gz))
            write_tar(cast(BinaryIO, tee))
            gz.close()
        elif compression == "zstd":
            with zstandard.ZstdCompressor(level=level).stream_writer(tmp, closefd=False) as zw:
                tee = _Tee(cast(BinaryIO, zw))
                write_tar(cast(BinaryIO, tee))
        else:
            tee = _Tee(cast(BinaryIO, tmp))
            write_tar(cast(BinaryIO, tee))
        tmp.flush()
        tmp.seek(0)
        digest, size = layout.ingest(cast(BinaryIO, tmp))
    return BuiltLayer(media_type, digest, size, tee.digester.digest, tee.digester.size)


def _write_image(
    layout: OCILayout,
    media: Media,
    layers: list[BuiltLayer],
    platform: Platform,
    history: list[dict[str, object]],
    labels: dict[str, str] | None = None,
) -> BuiltManifest:
    config_obj: dict[str, object] = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": platform.architecture,
        "os": platform.os,
        **({"variant": platform.variant} if platform.variant else {}),
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/app",
            **({"Labels": labels} if labels else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": history,
    }
    config = ImageConfig.from_json(ImageConfig(config_obj).to_json())
    config_type = mt.DOCKER_CONFIG if media == "docker" else mt.OCI_CONFIG
    config_desc = config.descriptor(config_type)
    layout.write_blob(config.to_bytes(), config_desc.digest)
    manifest = Manifest(
        config=config_desc,
        layers=[layer.descriptor() for layer in layers],
        media_type=mt.DOCKER_MANIFEST if media == "docker" else mt.OCI_MANIFEST,
    )
    desc = layout.write_document(manifest)
    return BuiltManifest(desc, manifest, config, layers, platform)


def _prepare(dest: Path) -> OCILayout:
    dest.mkdir(parents=True, exist_ok=True)
    return OCILayout(dest).init()


# --- public builders -----------------------------------------------------------------------------------


def build_rich_image(
    dest: Path,
    *,
    tag: str = "latest",
    media: Media = "oci",
    compression: Compression = "gzip",
    tar_format: int = tarfile.PAX_FORMAT,
    big_zero_size: int = BIG_ZERO_SIZE,
    payload_size: int = 0,
    payload_file_size: int = 8 * MIB,
    level: int = 6,
    platform: Platform | None = None,
    duplicate: bool = True,
) -> BuiltImage:
    """The three-layer edge-case image (see the module docstring) as ``oci:<dest>:<tag>``; without
    ``duplicate`` no path appears twice in a layer (formats such as containers/storage's refuse that)."""
    layout = _prepare(dest)
    platform = platform or Platform("linux", "amd64")
    base = edge.edge_layer(fmt=tar_format, big=False, duplicate=duplicate)
    layers = [
        _write_layer(layout, media, compression, lambda out: out.write(base), level),
        _write_layer(
            layout,
            media,
            compression,
            lambda out: _app_layer(out, tar_format, big_zero_size, payload_size, payload_file_size),
            level,
        ),
        _write_layer(layout, media, compression, lambda out: _changes_layer(out, tar_format), level),
    ]
    history: list[dict[str, object]] = [
        {"created": "2023-11-14T22:13:20Z", "created_by": "ADD base.tar /"},
        {"created": "2023-11-14T22:13:20Z", "created_by": "ENV A=b", "empty_layer": True},
        {"created": "2023-11-14T22:13:20Z", "created_by": "COPY app /app"},
        {"created": "2023-11-14T22:15:00Z", "created_by": "RUN changes", "comment": "whiteouts"},
    ]
    image = _write_image(layout, media, layers, platform, history, {"org.example.test": "rich"})
    layout.tag(image.descriptor, tag)
    return BuiltImage(dest, tag, layout.resolve(tag), [image])


def build_docker_image(dest: Path, **kwargs: object) -> BuiltImage:
    """The Docker schema2 variant of :func:`build_rich_image` (docker media types throughout)."""
    return build_rich_image(dest, media="docker", **kwargs)  # type: ignore[arg-type]


def build_simple_image(
    dest: Path,
    files: dict[str, bytes],
    *,
    tag: str = "latest",
    media: Media = "oci",
    compression: Compression = "gzip",
    platform: Platform | None = None,
) -> BuiltImage:
    """A one-layer image holding ``files`` (parent directories are implied)."""
    layout = _prepare(dest)
    platform = platform or Platform("linux", "amd64")

    def write(out: BinaryIO) -> None:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in files.items():
                _entry(tar, name, data=data)

    layer = _write_layer(layout, media, compression, write, 6)
    image = _write_image(layout, media, [layer], platform, [{"created_by": "simple"}])
    layout.tag(image.descriptor, tag)
    return BuiltImage(dest, tag, layout.resolve(tag), [image])


def build_multiplatform_image(
    dest: Path,
    *,
    tag: str = "latest",
    media: Media = "oci",
    compression: Compression = "gzip",
    platforms: Sequence[Platform] = (Platform("linux", "amd64"), Platform("linux", "arm64", "v8")),
) -> BuiltImage:
    """An index (or Docker manifest list) with one two-layer image per platform, of different content."""
    layout = _prepare(dest)
    images: list[BuiltManifest] = []
    for platform in platforms:
        arch = str(platform)

        def base(out: BinaryIO, arch: str = arch) -> None:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _entry(tar, "etc/", tarfile.DIRTYPE)
                _entry(tar, "etc/arch", data=f"{arch}\n".encode())
                _entry(tar, "bin/", tarfile.DIRTYPE)
                _entry(tar, "bin/tool", data=edge.payload(64 * 1024, zlib.crc32(arch.encode())), mode=0o755)
                _entry(tar, "bin/tool-link", tarfile.SYMTYPE, link="tool", mode=0o777)

        def top(out: BinaryIO, arch: str = arch) -> None:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _entry(tar, "etc/.wh.arch", data=b"")
                _entry(tar, "etc/platform", data=f"platform={arch}\n".encode())

        layers = [
            _write_layer(layout, media, compression, base, 6),
            _write_layer(layout, media, compression, top, 6),
        ]
        history: list[dict[str, object]] = [{"created_by": f"base {arch}"}, {"created_by": f"top {arch}"}]
        image = _write_image(layout, media, layers, platform, history)
        image.descriptor = image.descriptor.replace(platform=platform)
        images.append(image)
    index = Index(
        manifests=[image.descriptor for image in images],
        media_type=mt.DOCKER_MANIFEST_LIST if media == "docker" else mt.OCI_INDEX,
    )
    layout.tag(layout.write_document(index), tag)
    return BuiltImage(dest, tag, layout.resolve(tag), images)


def layer_tars(image: BuiltImage, which: int = 0) -> Iterator[bytes]:
    """The uncompressed tar of each layer of ``image.images[which]`` (small images only)."""
    layout = OCILayout(image.layout)
    for layer in image.images[which].layers:
        blob = layout.read_blob(layer.digest)
        if layer.media_type in (mt.OCI_LAYER_ZSTD,):
            yield zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        elif mt.layer_compression(layer.media_type) == "gzip":
            yield gzip.decompress(blob)
        else:
            yield blob


# --- pushing -------------------------------------------------------------------------------------------


def skopeo_available() -> bool:
    return shutil.which("skopeo") is not None


def push_layout(
    layout_dir: Path,
    dest_ref: str,
    *,
    tag: str = "latest",
    tls_verify: bool = True,
    creds: tuple[str, str] | None = None,
    cert_dir: Path | str | None = None,
    format: Literal["oci", "v2s2"] | None = "oci",
    timeout: float = 120.0,
) -> str:
    """Copy ``oci:<layout_dir>:<tag>`` (all platforms) to ``docker://<dest_ref>``; returns the pushed digest.

    ``format=None`` keeps the manifests as they are; "oci"/"v2s2" make skopeo convert them. skopeo's oci:
    transport ignores index.json entries with Docker media types, so a Docker image is staged in skopeo's
    ``dir:`` format first (which keeps the manifest bytes). Credentials go on skopeo's command line but
    never into the raised error.
    """
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        source = f"oci:{layout_dir}:{tag}"
        desc = OCILayout(layout_dir).resolve(tag)
        if desc.media_type in (mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST):
            source = f"dir:{_stage_dir(OCILayout(layout_dir), desc, Path(tmp) / 'dir')}"
        cmd = ["skopeo", "--insecure-policy", "copy", "--all", "--retry-times", "2"]
        cmd += ["--digestfile", str(digest_file), f"--dest-tls-verify={'true' if tls_verify else 'false'}"]
        if format is not None:
            cmd += ["--format", format]
        else:
            cmd += ["--preserve-digests"]
        if cert_dir is not None:
            cmd += ["--dest-cert-dir", str(cert_dir)]
        if creds is not None:
            cmd += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
        cmd += [source, f"docker://{dest_ref}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            message = proc.stderr.strip()
            if creds is not None:
                message = message.replace(creds[1], "***")
            raise RuntimeError(f"skopeo copy oci:{layout_dir}:{tag} -> {dest_ref} failed: {message}")
        return digest_file.read_text().strip()


def _stage_dir(layout: OCILayout, desc: Descriptor, dest: Path) -> Path:
    """Write the image ``desc`` names in skopeo's ``dir:`` transport format (version 1.1)."""
    dest.mkdir(parents=True)
    (dest / "version").write_text("Directory Transport Version: 1.1\n")

    def blob(digest: str) -> None:
        target = dest / digest.split(":", 1)[1]
        if not target.exists():
            shutil.copyfile(layout.blob_path(digest), target)

    def image(manifest_digest: str, name: str) -> None:
        raw = layout.read_blob(manifest_digest)
        (dest / name).write_bytes(raw)
        manifest = Manifest.from_json(raw)
        for d in [manifest.config, *manifest.layers]:
            blob(d.digest)

    if desc.media_type == mt.DOCKER_MANIFEST_LIST:
        (dest / "manifest.json").write_bytes(layout.read_blob(desc.digest))
        for child in Index.from_json(layout.read_blob(desc.digest)).manifests:
            image(child.digest, f"{child.digest.split(':', 1)[1]}.manifest.json")
    else:
        image(desc.digest, "manifest.json")
    return dest


def build_tree_image(
    dest: Path,
    trees: Sequence[tuple[Path, Sequence[str]]],
    *,
    tag: str = "latest",
    compression: Compression = "gzip",
    level: int = 1,
) -> BuiltImage:
    """An image with one layer per ``(root, relative paths)``: real files from this machine (GNU tar
    format, as build tools write), for benchmarks that need realistic layers of a given size."""
    layout = _prepare(dest)

    def writer(root: Path, names: Sequence[str]) -> Callable[[BinaryIO], None]:
        def write(out: BinaryIO) -> None:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name in names:
                    tar.add(root / name, arcname=name, recursive=False)

        return write

    layers = [_write_layer(layout, "oci", compression, writer(root, names), level) for root, names in trees]
    history: list[dict[str, object]] = [{"created_by": f"layer {i}"} for i in range(len(layers))]
    image = _write_image(layout, "oci", layers, Platform("linux", "amd64"), history)
    layout.tag(image.descriptor, tag)
    return BuiltImage(dest, tag, layout.resolve(tag), [image])


def pick_files(root: Path, size: int, skip: int = 0) -> list[str]:
    """Relative paths of regular files (and their directories) under ``root`` adding up to about ``size``
    bytes, after skipping the first ``skip`` bytes' worth in sorted walk order (for disjoint picks)."""
    names: list[str] = []
    seen = 0
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        dir_added = False
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if path.is_symlink() or not path.is_file():
                continue
            length = path.stat().st_size
            seen += length
            if seen <= skip:
                continue
            if not dir_added and rel_dir != ".":
                names.append(rel_dir)
                dir_added = True
            names.append(os.path.join(rel_dir, filename) if rel_dir != "." else filename)
            if seen - skip >= size:
                return names
    return names
