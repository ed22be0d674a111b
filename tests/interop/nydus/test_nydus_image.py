"""The ``nydus`` driver end to end: convert through the pipeline into a real registry, read the result
back with the registry client and check it the way nydus-snapshotter, nydusd and EROFS readers would.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accel.config import RegistryClientConfig
from accel.converter import Converter
from accel.drivers.nydus import EMPTY_LAYER_DIFF_ID, EMPTY_LAYER_DIGEST
from accel.formats.nydus import extract_via_toc, read_blob, validate
from accel.formats.nydus.reader import Bootstrap
from accel.formats.nydus.tail import read_layer_meta
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.oci.layout import OCILayout
from accel.oci.manifest import ImageConfig, Manifest
from accel.registry import RegistryClient
from tests.interop.nydus.erofs_tools import drop, fsck_extract, kernel_mount, snapshot, tool186
from tests.support.configs import make_config
from tests.support.images import (
    BuiltImage,
    build_multiplatform_image,
    build_rich_image,
    layer_tars,
    push_layout,
)
from tests.support.oci_apply import Entry, apply_layers
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.interop]

NYDUS_BOOT_TAR = "image/image.boot"
FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
_FMT = {
    "reg": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "chr": stat.S_IFCHR,
    "blk": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


def _client(server: RegistryServer) -> RegistryClient:
    settings = RegistryClientConfig(max_retries=3, backoff_initial=0.01, backoff_max=0.05, timeout=30)
    return RegistryClient({server.host: server.source()}, settings)


def _split(ref: str) -> tuple[str, str, str]:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    return host, repo, tag


@dataclass
class Pulled:
    """A converted image as read back from the registry."""

    manifest: dict[str, Any]
    config: dict[str, Any]
    blobs: dict[str, bytes]  # layer digest -> bytes
    bootstrap_tar: bytes  # uncompressed


def _pull(server: RegistryServer, ref: str) -> Pulled:
    host, repo, tag = _split(ref)
    with _client(server) as client:
        fetched = client.get_manifest(host, repo, tag)
        assert fetched.media_type == mt.OCI_MANIFEST
        manifest = fetched.json()
        config = json.loads(client.get_blob(host, repo, manifest["config"]["digest"]))
        blobs = {
            layer["digest"]: client.get_blob(host, repo, layer["digest"], max_size=256 << 20)
            for layer in manifest["layers"]
        }
    for digest, data in blobs.items():
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    boot = gzip.decompress(blobs[manifest["layers"][-1]["digest"]])
    return Pulled(manifest, config, blobs, boot)


def _tar_files(data: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for member in tf.getmembers():
            if member.isfile():
                f = tf.extractfile(member)
                assert f is not None
                out[member.name] = f.read()
            else:
                assert member.isdir() and member.name == "image", member.name
    return out


@dataclass
class Converted:
    image: BuiltImage
    source: str
    source_digest: str
    target: str
    pulled: Pulled
    work: Path
    registry: RegistryServer


@pytest.fixture(scope="module")
def rich(registry_plain: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    tmp = tmp_path_factory.mktemp("nydus-image")
    image = build_rich_image(tmp / "src")
    source = f"{registry_plain.host}/nydus-e2e/rich:v1"
    source_digest = push_layout(image.layout, source, format=None, tls_verify=False)
    config = make_config(
        tmp / "work",
        {registry_plain.host: registry_plain.source()},
        driver="nydus",
        driver_config={},
        tag_suffix="-nydus",
    )
    with Converter(config) as converter:
        result = converter.convert(source)
    assert result.target == source + "-nydus"
    assert result.source_digest == source_digest
    return Converted(
        image, source, source_digest, result.target, _pull(registry_plain, result.target), tmp, registry_plain
    )


def test_layers_config_and_annotations(rich: Converted) -> None:
    pulled = rich.pulled
    src = rich.image.images[0]
    layers = pulled.manifest["layers"]
    assert len(layers) == len(src.layers) + 1
    for layer in layers[:-1]:
        assert layer["mediaType"] == mt.NYDUS_BLOB
        assert layer["annotations"] == {keys.NYDUS_BLOB: "true"}
    boot = layers[-1]
    assert boot["mediaType"] == mt.OCI_LAYER_GZIP
    assert boot["annotations"][keys.NYDUS_BOOTSTRAP] == "true"
    assert boot["annotations"][FS_VERSION] == "6"

    diff_ids = pulled.config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(layers)
    assert diff_ids[:-1] == [layer["digest"] for layer in layers[:-1]]
    assert diff_ids[-1] == "sha256:" + hashlib.sha256(pulled.bootstrap_tar).hexdigest()
    history = pulled.config["history"]
    assert history[:-1] == src.config.data["history"]
    assert history[-1].get("comment") == "Nydus Bootstrap Layer"
    assert not history[-1].get("empty_layer")

    notes = pulled.manifest["annotations"]
    assert notes[keys.NYDUS_SOURCE_DIGEST] == rich.source_digest
    assert notes["containerd.io/snapshot/nydus-source-reference"] == rich.source
    assert notes[FS_VERSION] == "6"
    assert notes["containerd.io/snapshot/nydus-builder-version"]
    assert "subject" not in pulled.manifest


def test_bootstrap_layer_and_blobs_agree(rich: Converted) -> None:
    pulled = rich.pulled
    blob_layers = pulled.manifest["layers"][:-1]
    files = _tar_files(pulled.bootstrap_tar)
    assert next(iter(files)) == NYDUS_BOOT_TAR
    assert set(files) == {NYDUS_BOOT_TAR} | {
        f"image/{layer['digest'].split(':', 1)[1]}.blob.meta" for layer in blob_layers
    }
    merged = files[NYDUS_BOOT_TAR]
    blobs = {layer["digest"].split(":", 1)[1]: pulled.blobs[layer["digest"]] for layer in blob_layers}
    bs = validate(merged, blobs)
    # Blob-table order is first reference in the merged tree (spec 5), not layer order; validate() has
    # checked each entry against the blob of the same id.
    assert sorted(b.blob_id for b in bs.blobs) == sorted(blobs)
    for hex_id, data in blobs.items():
        # Consumers find the per-layer bootstrap through the ToC and by walking the tar headers backwards.
        via_toc = extract_via_toc(data, "image.boot")
        via_headers = read_blob(data).bootstrap()
        assert via_toc == via_headers and via_toc is not None and len(via_toc) > 0
        meta = files[f"image/{hex_id}.blob.meta"]
        assert meta[-4096:] == extract_via_toc(data, "blob.meta.header")
        assert meta.startswith(extract_via_toc(data, "blob.meta"))
        # The lazy path: the trailer fetched from the registry with HTTP range requests only.
        assert _ranged_layer_meta(rich, f"sha256:{hex_id}", len(data)) == (via_toc, meta)


def _ranged_layer_meta(rich: Converted, digest: str, size: int) -> tuple[bytes, bytes]:
    host, repo, _ = _split(rich.target)
    with _client(rich.registry) as client:

        def read_at(offset: int, length: int) -> bytes:
            return client.read_blob_range(host, repo, digest, offset, length)

        return read_layer_meta(read_at, size)


# --- the merged tree against the OCI layer-apply model -------------------------------------------------


def _ustar_mtimes(tars: list[bytes]) -> dict[str, int]:
    """Each path's mtime as its ustar header field says, topmost layer winning.

    nydus takes mtime from the ustar header and ignores a PAX ``mtime`` record (spec 3), so a fractional
    PAX mtime becomes whatever integer the tar writer put in the header (Python's rounds).
    """
    out: dict[str, int] = {}
    for data in tars:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf.getmembers():
                if isinstance(m.mtime, float):
                    field = data[m.offset_data - 512 + 136 : m.offset_data - 512 + 148]
                    out["/" + m.name.strip("/").removeprefix("./")] = int(field.rstrip(b"\0 ") or b"0", 8)
    return out


def _model(image: BuiltImage) -> dict[str, dict[str, Any]]:
    """The OCI layer-apply reference, in the shape of :func:`erofs_tools.snapshot`."""
    tars = list(layer_tars(image))
    fs: dict[str, Entry] = apply_layers(tars)
    header_mtimes = _ustar_mtimes(tars)
    out: dict[str, dict[str, Any]] = {}
    for path, e in fs.items():
        item: dict[str, Any] = {"fmt": _FMT[e.type], "mode": e.mode, "uid": e.uid, "gid": e.gid}
        if e.type == "reg":
            item["size"] = e.size
            item["sha256"] = e.sha256
        if e.type == "symlink":
            item["target"] = e.target
        else:
            item["mtime"] = header_mtimes.get(path, e.mtime)
        if e.rdev is not None:
            item["rdev"] = e.rdev
        out[path] = item
    # Parents a layer implies without an entry of their own exist in a runtime's rootfs as 0755 root dirs
    # with mtime 0 (nydus synthesises them the same way).
    for path in list(out):
        parent = path.rsplit("/", 1)[0] or "/"
        while parent not in out:
            out[parent] = {"fmt": stat.S_IFDIR, "mode": 0o755, "uid": 0, "gid": 0, "mtime": 0}
            parent = parent.rsplit("/", 1)[0] or "/"
    return out


def _no_suid(snap: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """erofs-utils 1.5 chowns after chmod, which clears set-id bits (1.8.6 and the kernel keep them)."""
    return {p: {**d, "mode": d["mode"] & 0o1777} for p, d in snap.items()}


@pytest.fixture(scope="module")
def devices(rich: Converted) -> tuple[Path, list[Path], Bootstrap]:
    """The merged bootstrap and one uncompressed device image per blob, in blob-table order."""
    root = rich.work / "erofs"
    root.mkdir()
    files = _tar_files(rich.pulled.bootstrap_tar)
    boot = root / "image.boot"
    boot.write_bytes(files[NYDUS_BOOT_TAR])
    by_id = {d.split(":", 1)[1]: data for d, data in rich.pulled.blobs.items()}
    bs = validate(files[NYDUS_BOOT_TAR])
    devs = []
    for entry, device in zip(bs.blobs, bs.devices, strict=True):
        path = root / f"{entry.blob_id}.dev"
        path.write_bytes(read_blob(by_id[entry.blob_id]).device_image(bs.compressor, device.blocks * 4096))
        devs.append(path)
    return boot, devs, bs


def _skip_unless_fsck() -> None:
    if shutil.which("fsck.erofs") is None:
        pytest.skip("erofs-utils is not installed")


def test_fsck_15_extract_equals_oci_layer_apply(
    rich: Converted, devices: tuple[Path, list[Path], Bootstrap], tmp_path: Path
) -> None:
    _skip_unless_fsck()
    boot, devs, _ = devices
    fsck_extract(["fsck.erofs"], boot, devs, tmp_path / "x")
    got = _no_suid(snapshot(tmp_path / "x"))
    want = _no_suid(_model(rich.image))
    assert drop(got, "mtime") == drop(want, "mtime")
    assert {p: d.get("mtime") for p, d in got.items() if p != "/"} == {
        p: d.get("mtime") for p, d in want.items() if p != "/"
    }
    assert "/app/zeros.bin" in got and not any("/.wh." in p for p in got)


def test_fsck_186_extract_keeps_xattrs_and_hardlinks(
    rich: Converted, devices: tuple[Path, list[Path], Bootstrap], tmp_path: Path
) -> None:
    _skip_unless_fsck()
    fsck = tool186("fsck.erofs")
    if fsck is None:
        pytest.skip("erofs-utils 1.8.6 could not be fetched from Debian trixie")
    boot, devs, _ = devices
    fsck_extract(fsck, boot, devs, tmp_path / "x", ("--xattrs",))
    got = snapshot(tmp_path / "x", xattrs=True, links=True)
    want = _model(rich.image)
    assert drop(got, "xattrs", "link") == want
    # fsck.erofs 1.8.6 --xattrs restores neither the empty user.empty nor the arbitrary security.capability
    # bytes (the kernel refuses them); the kernel-mount test reads user.empty from the same bootstrap.
    _check_xattrs_and_links(rich.image, got, frozenset({"user.empty"}))


def _check_xattrs_and_links(
    image: BuiltImage, got: dict[str, dict[str, Any]], may_miss: frozenset[str] = frozenset()
) -> None:
    fs = apply_layers(list(layer_tars(image)))
    with_xattrs = {p: e.xattrs for p, e in fs.items() if e.xattrs}
    assert with_xattrs, "the rich image must carry xattrs"
    for path, attrs in with_xattrs.items():
        on_disk = got[path]["xattrs"]
        assert {k: v for k, v in on_disk.items() if k in attrs} == {
            k: v for k, v in attrs.items() if k in on_disk
        }
        assert set(attrs) - set(on_disk) <= {"security.capability"} | may_miss
        assert "user.text" in on_disk
    groups: dict[str, set[str]] = {}
    for path, item in got.items():
        if "link" in item:
            groups.setdefault(item["link"], set()).add(path)
    assert any(len(g) > 1 for g in groups.values()), "the rich image's hardlinks must stay hardlinks"


def test_kernel_mount_equals_oci_layer_apply(
    rich: Converted, devices: tuple[Path, list[Path], Bootstrap], tmp_path: Path
) -> None:
    boot, devs, _ = devices
    with kernel_mount(boot, devs, tmp_path / "mnt") as mnt:
        if isinstance(mnt, str):
            pytest.skip(mnt)
        got = snapshot(mnt, links=True)
        for path in got:
            got[path]["xattrs"] = _kernel_xattrs(mnt / path.lstrip("/"))
    assert {p: d for p, d in drop(got, "xattrs", "link").items() if p != "/"} == {
        p: d for p, d in _model(rich.image).items() if p != "/"
    }
    _check_xattrs_and_links(rich.image, got)


def _kernel_xattrs(path: Path) -> dict[str, bytes]:
    """The kernel validates ``security.capability`` on read and refuses the test's arbitrary bytes."""
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if not (name == "security.capability" and exc.errno == errno.EINVAL):
                raise
    return out


# --- referrer and merged-index options ------------------------------------------------------------------


def _convert(
    server: RegistryServer, tmp: Path, image: BuiltImage, repo: str, options: dict[str, str]
) -> tuple[str, str]:
    source = f"{server.host}/{repo}:v1"
    digest = push_layout(image.layout, source, format=None, tls_verify=False)
    config = make_config(
        tmp / "work",
        {server.host: server.source()},
        driver="nydus",
        driver_config=options,
        tag_suffix="-nydus",
    )
    with Converter(config) as converter:
        result = converter.convert(source)
    return result.target, digest


def test_with_referrer_sets_subject(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src", big_zero_size=1 << 16)
    target, digest = _convert(
        registry_plain, tmp_path, image, "nydus-e2e/referrer", {"with_referrer": "true"}
    )
    pulled = _pull(registry_plain, target)
    src = image.images[0].descriptor
    assert pulled.manifest["subject"] == {"mediaType": src.media_type, "digest": digest, "size": src.size}
    assert digest == src.digest


def _merged_index(server: RegistryServer, target: str) -> dict[str, Any]:
    host, repo, tag = _split(target)
    with _client(server) as client:
        fetched = client.get_manifest(host, repo, tag)
        assert fetched.media_type == mt.OCI_INDEX
        index: dict[str, Any] = fetched.json()
        for entry in index["manifests"]:
            doc = client.get_manifest(host, repo, entry["digest"])
            assert doc.media_type == entry["mediaType"] == mt.OCI_MANIFEST
            layers = doc.json()["layers"]
            is_nydus = entry.get("artifactType") == mt.NYDUS_ARTIFACT
            assert (layers[0]["mediaType"] == mt.NYDUS_BLOB) == is_nydus
    return index


def _copy_all(server: RegistryServer, ref: str, dest: Path, *, every: bool = True) -> None:
    subprocess.run(
        [
            *("skopeo", "--insecure-policy", "--override-os", "linux", "--override-arch", "amd64", "copy"),
            *(["--all"] if every else []),
            *server.skopeo_args("src"),
            *(f"docker://{ref}", f"oci:{dest}:x"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def test_merge_manifest_single_platform(registry_plain: RegistryServer, tmp_path: Path) -> None:
    """Upstream's merged index: the OCI manifest gets an empty first layer, so its layer chain (and the
    snapshots a runtime unpacks for it) differs from the original image's; the same source gives the same
    digests every time."""
    image = build_rich_image(tmp_path / "src", big_zero_size=1 << 16)
    target, digest = _convert(
        registry_plain, tmp_path, image, "nydus-e2e/merged1", {"merge_manifest": "true"}
    )
    entries = _merged_index(registry_plain, target)["manifests"]
    assert len(entries) == 2 and entries[1]["artifactType"] == mt.NYDUS_ARTIFACT
    assert entries[0]["digest"] != digest and "artifactType" not in entries[0]
    assert entries[0]["annotations"] == {keys.NYDUS_SOURCE_DIGEST: digest}
    assert entries[0]["platform"] == entries[1]["platform"] == {"architecture": "amd64", "os": "linux"}
    again, _ = _convert(registry_plain, tmp_path, image, "nydus-e2e/merged1b", {"merge_manifest": "true"})
    assert _merged_index(registry_plain, again)["manifests"][0]["digest"] == entries[0]["digest"]

    # A client without Nydus support picks the first matching entry: the original's layers, after one
    # empty layer whose diff_id and history entry lead the config.
    _copy_all(registry_plain, target, tmp_path / "one", every=False)
    one = OCILayout(tmp_path / "one")
    pulled = one.read_document(one.resolve("x"))
    assert isinstance(pulled, Manifest)
    first, *rest = pulled.layers
    assert [layer.digest for layer in rest] == [layer.digest for layer in image.images[0].layers]
    assert (first.digest, first.size, first.annotations) == (
        EMPTY_LAYER_DIGEST,
        32,
        {keys.NYDUS_EMPTY_LAYER: "true"},
    )
    assert gzip.decompress(one.read_blob(first.digest)) == bytes(1024)
    config = ImageConfig.from_json(one.read_blob(pulled.config.digest))
    original = image.images[0].config
    assert config.diff_ids == [EMPTY_LAYER_DIFF_ID, *original.diff_ids]
    assert config.history == [
        {"created_by": "Nydus Converter", "comment": "Nydus Empty Layer"},
        *original.history,
    ]
    assert pulled.annotations[keys.NYDUS_SOURCE_DIGEST] == digest
    _copy_all(registry_plain, target, tmp_path / "out")
    assert len(OCILayout(tmp_path / "out").index().manifests) == 1


def test_merge_manifest_can_keep_the_original(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_rich_image(tmp_path / "src", big_zero_size=1 << 16)
    options = {"merge_manifest": "true", "merge_keep_original": "true"}
    target, digest = _convert(registry_plain, tmp_path, image, "nydus-e2e/merged-keep", options)
    entries = _merged_index(registry_plain, target)["manifests"]
    assert entries[0]["digest"] == digest and "artifactType" not in entries[0]
    _copy_all(registry_plain, target, tmp_path / "one", every=False)
    one = OCILayout(tmp_path / "one")
    pulled = one.read_document(one.resolve("x"))
    assert isinstance(pulled, Manifest)
    assert [layer.digest for layer in pulled.layers] == [layer.digest for layer in image.images[0].layers]


def test_merge_manifest_two_platforms(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = build_multiplatform_image(tmp_path / "src")
    target, _ = _convert(registry_plain, tmp_path, image, "nydus-e2e/merged2", {"merge_manifest": "true"})
    entries = _merged_index(registry_plain, target)["manifests"]
    assert len(entries) == 4
    for built, (orig, nydus_entry) in zip(
        image.images, zip(entries[::2], entries[1::2], strict=True), strict=True
    ):
        assert orig["annotations"][keys.NYDUS_SOURCE_DIGEST] == built.descriptor.digest
        assert orig["digest"] != built.descriptor.digest and "artifactType" not in orig
        assert nydus_entry["artifactType"] == mt.NYDUS_ARTIFACT
        assert orig["platform"] == nydus_entry["platform"]
        assert orig["platform"]["architecture"] == built.platform.architecture
    _copy_all(registry_plain, target, tmp_path / "out")
    out = OCILayout(tmp_path / "out")
    copied = out.read_document(out.resolve("x"))
    assert [d.digest for d in copied.manifests] == [e["digest"] for e in entries]  # type: ignore[union-attr]
