"""The test images of tests/support/images.py: they contain what they promise and skopeo reads them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from accel.oci import mediatypes as mt
from accel.oci.layout import OCILayout
from accel.oci.manifest import Index, Manifest
from tests.support import images, layers

needs_skopeo = pytest.mark.skipif(not images.skopeo_available(), reason="skopeo not installed")


def _members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {m.name: m for m in tf.getmembers()}


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> images.BuiltImage:
    return images.build_rich_image(tmp_path_factory.mktemp("rich") / "layout")


def test_rich_image_structure(rich: images.BuiltImage) -> None:
    layout = OCILayout(rich.layout)
    assert layout.resolve(rich.tag).digest == rich.descriptor.digest
    manifest = layout.read_document(rich.descriptor)
    assert isinstance(manifest, Manifest)
    assert [d.media_type for d in manifest.layers] == [mt.OCI_LAYER_GZIP] * 3
    config = json.loads(layout.read_blob(manifest.config.digest))
    tars = list(images.layer_tars(rich))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    for desc, built in zip(manifest.layers, rich.images[0].layers, strict=True):
        assert layout.read_blob(desc.digest)[:2] == b"\x1f\x8b"
        assert (desc.digest, desc.size) == (built.digest, built.size)


def test_rich_image_contents(rich: images.BuiltImage) -> None:
    base, app, changes = (_members(t) for t in images.layer_tars(rich))
    assert base["usr/bin/link-to-suid"].islnk()
    assert base["usr/bin/sym"].issym()
    assert base["dev/null"].ischr() and (base["dev/null"].devmajor, base["dev/null"].devminor) == (1, 3)
    assert base["dev/sda"].isblk()
    assert base["run/fifo"].isfifo()
    assert base["times/zero"].mtime == 0
    assert base["times/fraction-up"].mtime == pytest.approx(1700000000.6)
    xattrs = base["xattr/file"].pax_headers
    assert xattrs["SCHILY.xattr.user.text"] == "hello world"
    assert (
        xattrs["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == layers.BINARY_XATTR
    )
    assert len(layers.LONG_NAME.encode()) == 150 and layers.LONG_NAME in base
    assert layers.UTF8_NAME in base
    assert app["times/.wh.zero"].isreg()
    assert app["app/hardlink-to-readme"].islnk()
    assert app[images.BIG_ZERO_FILE].size == 16 * images.MIB
    assert changes["app/.wh.remove-me.txt"].isreg()
    assert changes["app/.wh.gone"].isreg()
    assert changes["app/opaque/.wh..wh..opq"].isreg()
    assert "app/r\u00e9sum\u00e9-\u6587\u4ef6.txt" in changes
    assert changes["etc/hostname"].mtime == pytest.approx(1700000100.25)
    app_tar = list(images.layer_tars(rich))[1]
    with tarfile.open(fileobj=io.BytesIO(app_tar)) as tf:
        f = tf.extractfile(images.BIG_ZERO_FILE)
        assert f is not None
        zeros = f.read()
    assert zeros == images.zero_file_bytes()
    assert zeros.count(0) > len(zeros) - 32


def test_docker_variant(tmp_path: Path) -> None:
    built = images.build_docker_image(tmp_path / "d", big_zero_size=4096)
    layout = OCILayout(built.layout)
    manifest = layout.read_document(built.descriptor)
    assert isinstance(manifest, Manifest) and manifest.is_docker
    assert built.descriptor.media_type == mt.DOCKER_MANIFEST
    assert manifest.config.media_type == mt.DOCKER_CONFIG
    assert {d.media_type for d in manifest.layers} == {mt.DOCKER_LAYER_GZIP}


def test_compressions_and_payload(tmp_path: Path) -> None:
    plain = images.build_rich_image(
        tmp_path / "p",
        compression="none",
        big_zero_size=1024,
        payload_size=3_000_000,
        payload_file_size=1_000_000,
    )
    app = plain.images[0].layers[1]
    assert app.media_type == mt.OCI_LAYER
    assert app.digest == app.diff_id and app.size >= 3_000_000
    assert (
        sum(
            1 for n in _members(OCILayout(plain.layout).read_blob(app.digest)) if n.startswith("app/payload/")
        )
        == 3
    )
    zst = images.build_rich_image(tmp_path / "z", compression="zstd", big_zero_size=1024)
    blob = OCILayout(zst.layout).read_blob(zst.images[0].layers[0].digest)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == layers.edge_layer(big=False)
    gnu = images.build_rich_image(tmp_path / "g", tar_format=tarfile.GNU_FORMAT, big_zero_size=1024)
    gnu_tar = gzip.decompress(OCILayout(gnu.layout).read_blob(gnu.images[0].layers[1].digest))
    assert gnu_tar[257:265] == b"ustar  \0"  # the GNU magic
    assert images.BIG_ZERO_FILE in _members(gnu_tar)
    assert all(i.size for i in images.build_simple_image(tmp_path / "s", {"a": b"1"}).images[0].layers)


def test_multiplatform(tmp_path: Path) -> None:
    built = images.build_multiplatform_image(tmp_path / "m")
    assert built.is_index
    index = OCILayout(built.layout).read_document(built.descriptor)
    assert isinstance(index, Index)
    assert [str(d.platform) for d in index.manifests] == ["linux/amd64", "linux/arm64/v8"]
    amd, arm = built.images
    assert {d.digest for d in amd.manifest.layers}.isdisjoint(d.digest for d in arm.manifest.layers)
    assert (amd.config.architecture, arm.config.architecture) == ("amd64", "arm64")
    files = images.layer_tars(built, which=1)
    assert b"linux/arm64/v8" in next(files)


@needs_skopeo
@pytest.mark.parametrize("kind", ["rich", "multi"])
def test_skopeo_inspects_built_images(tmp_path: Path, kind: str) -> None:
    if kind == "rich":
        built = images.build_rich_image(tmp_path / kind, tag="v1", big_zero_size=4096)
    else:
        built = images.build_multiplatform_image(tmp_path / kind, tag="v1")
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", built.ref], capture_output=True, check=True, timeout=60
    )
    assert hashlib.sha256(raw.stdout).hexdigest() == built.descriptor.digest.split(":")[1]
    info = subprocess.run(["skopeo", "inspect", built.ref], capture_output=True, check=True, timeout=60)
    assert json.loads(info.stdout)["Layers"] == [layer.digest for layer in built.images[0].layers]


@pytest.mark.integration
@needs_skopeo
def test_push_layout_to_registry(tmp_path: Path) -> None:
    from tests.support import registry

    if not registry.registry_available():
        pytest.skip("docker-registry not installed")
    server = registry.start_registry("plain", tmp_path / "registry")
    try:
        docker = images.build_docker_image(tmp_path / "docker", big_zero_size=4096)
        multi = images.build_multiplatform_image(tmp_path / "multi")
        pushed = images.push_layout(docker.layout, f"{server.host}/t/docker:1", tls_verify=False, format=None)
        assert pushed == docker.descriptor.digest  # Docker manifests keep their bytes via the dir: staging
        pushed = images.push_layout(multi.layout, f"{server.host}/t/multi:1", tls_verify=False, format="v2s2")
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{server.host}/t/multi:1"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        assert json.loads(raw.stdout)["mediaType"] == mt.DOCKER_MANIFEST_LIST
        assert pushed == "sha256:" + hashlib.sha256(raw.stdout).hexdigest()
    finally:
        server.close()


@pytest.mark.integration
@needs_skopeo
def test_push_layout_hides_the_password(tmp_path: Path) -> None:
    from tests.support import registry

    if not registry.registry_available():
        pytest.skip("docker-registry not installed")
    server = registry.start_registry("tls", tmp_path / "registry")
    try:
        built = images.build_simple_image(tmp_path / "img", {"f": b"x"})
        cert_dir = Path(server.ca_file).parent
        user = registry.PUSH_USER[0]
        with pytest.raises(RuntimeError, match="skopeo copy") as info:
            images.push_layout(
                built.layout, f"{server.host}/t/x:1", creds=(user, "wrong-Secret-42"), cert_dir=cert_dir
            )
        assert "wrong-Secret-42" not in str(info.value)
        digest = images.push_layout(
            built.layout, f"{server.host}/t/x:1", creds=server.credentials(), cert_dir=cert_dir
        )
        assert digest == built.descriptor.digest
    finally:
        server.close()


def test_skopeo_missing_tool_is_reported() -> None:
    assert images.skopeo_available() == (shutil.which("skopeo") is not None)
