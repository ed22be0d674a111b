"""``chunk_dict_ref`` end to end: two images sharing files in a real registry; the second, converted with
the first's Nydus image as its chunk dictionary, writes only the chunks the first lacks, lists the
dictionary's blob as a layer of its own, and reads back (through both blobs) as its source."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from accel.config import RegistryClientConfig
from accel.content import ContentStore
from accel.converter import Converter
from accel.errors import ConversionError
from accel.formats.nydus import file_tree, read_blob, validate
from accel.oci import annotations as keys
from accel.oci import mediatypes as mt
from accel.registry import RegistryClient
from tests.interop.nydus.erofs_tools import drop, fsck_extract, gnu_extract, snapshot
from tests.support.configs import make_config
from tests.support.images import build_tree_image, layer_tars, push_layout
from tests.support.oci_apply import apply_layers, as_tree
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.interop]

MIB = 1 << 20


def _pseudo(seed: bytes, n: int) -> bytes:
    """Incompressible bytes, so that every chunk is its own."""
    out = bytearray()
    block = seed
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


def _tree(root: Path, files: dict[str, bytes]) -> list[str]:
    names: list[str] = []
    for name, data in files.items():
        parent = Path(name).parent
        if str(parent) != "." and str(parent) not in names:
            (root / parent).mkdir(parents=True, exist_ok=True)
            names.append(str(parent))
        (root / name).write_bytes(data)
        names.append(name)
    return names


SHARED = {"shared/big": _pseudo(b"big", 3 * MIB), "shared/small": b"small and shared\n"}
FIRST_ONLY = {"first/only": _pseudo(b"first", MIB // 2)}
SECOND_ONLY = {"second/only": _pseudo(b"second", MIB + MIB // 2)}


def _client(server: RegistryServer) -> RegistryClient:
    settings = RegistryClientConfig(max_retries=3, backoff_initial=0.01, backoff_max=0.05, timeout=30)
    return RegistryClient({server.host: server.source()}, settings)


def _image(tmp: Path, name: str, files: dict[str, bytes]) -> Any:
    root = tmp / f"{name}-files"
    root.mkdir()
    return build_tree_image(tmp / name, [(root, _tree(root, files))])


def _convert(
    server: RegistryServer,
    work: Path,
    source: str,
    options: dict[str, str],
    target: str | None = None,
    **extra: Any,
) -> Any:
    config = make_config(
        work,
        {server.host: server.source()},
        driver="nydus",
        driver_config=options,
        tag_suffix="-nydus",
        **extra,
    )
    with Converter(config) as converter:
        return converter.convert(source, target=target)


def _pull(server: RegistryServer, ref: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    with _client(server) as client:
        manifest = client.get_manifest(host, repo, tag).json()
        config = json.loads(client.get_blob(host, repo, manifest["config"]["digest"]))
        blobs = {
            layer["digest"]: client.get_blob(host, repo, layer["digest"], max_size=64 << 20)
            for layer in manifest["layers"]
        }
    return manifest, config, blobs


def test_second_image_references_the_first_as_chunk_dictionary(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    first = _image(tmp_path, "first", {**SHARED, **FIRST_ONLY})
    second = _image(tmp_path, "second", {**SHARED, **SECOND_ONLY})
    host = registry_plain.host
    push_layout(first.layout, f"{host}/dict/first:v1", format=None, tls_verify=False)
    push_layout(second.layout, f"{host}/apps/second:v1", format=None, tls_verify=False)
    dictionary = _convert(registry_plain, tmp_path / "w1", f"{host}/dict/first:v1", {})
    plain = _convert(
        registry_plain, tmp_path / "w0", f"{host}/apps/second:v1", {}, target=f"{host}/apps/second:plain"
    )
    result = _convert(
        registry_plain, tmp_path / "w2", f"{host}/apps/second:v1", {"chunk_dict_ref": dictionary.target}
    )

    dict_manifest, _, dict_blobs = _pull(registry_plain, dictionary.target)
    manifest, config, blobs = _pull(registry_plain, result.target)
    dict_blob = dict_manifest["layers"][0]
    layers = manifest["layers"]
    # Its own blob, then the dictionary's blob (pushed into this repository), then the bootstrap.
    assert [layer["digest"] for layer in layers[1:-1]] == [dict_blob["digest"]]
    assert layers[1] == {
        "mediaType": mt.NYDUS_BLOB,
        "digest": dict_blob["digest"],
        "size": dict_blob["size"],
        "annotations": {keys.NYDUS_BLOB: "true"},
    }
    assert blobs[dict_blob["digest"]] == dict_blobs[dict_blob["digest"]]
    # The dictionary was read by ranges of its bootstrap layer: its data blob was mounted into the target,
    # never pulled into this conversion's content store.
    assert not ContentStore.for_work_dir(tmp_path / "w2").has(dict_blob["digest"])
    assert config["rootfs"]["diff_ids"][:2] == [layers[0]["digest"], dict_blob["digest"]]

    # shared/big (3 chunks) and shared/small come from the dictionary; second/only's 2 chunks are written.
    own = read_blob(blobs[layers[0]["digest"]])
    assert len(own.chunks) == 2
    # Converted again, layers and bootstrap come from the layer cache, and the dictionary blob is still
    # listed: the same manifest.
    again = _convert(
        registry_plain, tmp_path / "w2", f"{host}/apps/second:v1", {"chunk_dict_ref": dictionary.target}
    )
    assert (again.cache_hits, again.target_digest) == (1, result.target_digest)
    plain_manifest, _, plain_blobs = _pull(registry_plain, plain.target)
    assert len(read_blob(plain_blobs[plain_manifest["layers"][0]["digest"]]).chunks) == 6
    assert any("4 chunks" in note and "chunk dictionary" in note for note in result.notes), result.notes

    boot_tar = gzip.decompress(blobs[layers[-1]["digest"]])
    merged = _boot(boot_tar)
    by_id = {d.split(":", 1)[1]: data for d, data in blobs.items() if d != layers[-1]["digest"]}
    bs = validate(merged, by_id)
    assert sorted(b.blob_id for b in bs.blobs) == sorted(by_id)
    assert [d.blob_id for d in bs.devices] == [b.blob_id for b in bs.blobs]
    devices = [
        read_blob(by_id[b.blob_id]).device_image(bs.compressor, d.blocks * 4096)
        for b, d in zip(bs.blobs, bs.devices, strict=True)
    ]
    tree = file_tree(bs, devices)
    for item in tree:
        for key in ("nlink", "hardlink_group", "rdev", "mtime_nsec"):
            item.pop(key, None)
    assert tree == as_tree(apply_layers(list(layer_tars(second))))

    if shutil.which("fsck.erofs") is None:
        pytest.skip("erofs-utils is not installed")
    boot = tmp_path / "image.boot"
    boot.write_bytes(merged)
    paths = []
    for entry, raw in zip(bs.blobs, devices, strict=True):
        path = tmp_path / f"{entry.blob_id}.dev"
        path.write_bytes(raw)
        paths.append(path)
    fsck_extract(["fsck.erofs"], boot, paths, tmp_path / "x")
    src = tmp_path / "src.tar"
    src.write_bytes(next(layer_tars(second)))
    gnu_extract(src, tmp_path / "want")
    assert drop(snapshot(tmp_path / "x"), "mtime") == drop(snapshot(tmp_path / "want"), "mtime")


def _boot(boot_tar: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(boot_tar)) as tf:
        member = tf.extractfile("image/image.boot")
        assert member is not None
        return member.read()


def test_a_dictionary_that_is_not_nydus_is_refused(registry_plain: RegistryServer, tmp_path: Path) -> None:
    image = _image(tmp_path, "plain", SHARED)
    host = registry_plain.host
    push_layout(image.layout, f"{host}/dict/not-nydus:v1", format=None, tls_verify=False)
    with pytest.raises(ConversionError, match="not a Nydus image"):
        _convert(
            registry_plain,
            tmp_path / "w",
            f"{host}/dict/not-nydus:v1",
            {"chunk_dict_ref": f"{host}/dict/not-nydus:v1"},
        )


def test_only_dictionary_blobs_the_merged_image_uses_are_listed(
    registry_plain: RegistryServer, tmp_path: Path
) -> None:
    """A dictionary of two blobs; the second image's upper layer deletes the only file backed by one of
    them: that blob is left out of the merged bootstrap, so out of the manifest too, and the converter's own
    check of the result (converter.verify) passes."""
    big_root, small_root, upper_root = (tmp_path / n for n in ("big", "small", "upper"))
    for root in (big_root, small_root, upper_root):
        root.mkdir()
    trees = [
        (big_root, _tree(big_root, {"shared/big": SHARED["shared/big"]})),
        (small_root, _tree(small_root, {"shared/small": _pseudo(b"small", MIB)})),
    ]
    first = build_tree_image(tmp_path / "first", trees)
    lower_root = tmp_path / "lower"
    lower_root.mkdir()
    lower = _tree(lower_root, {"shared/big": SHARED["shared/big"], "shared/small": _pseudo(b"small", MIB)})
    lower += _tree(lower_root, SECOND_ONLY)
    upper = _tree(upper_root, {"shared/.wh.small": b""})
    second = build_tree_image(tmp_path / "second", [(lower_root, lower), (upper_root, upper)])
    host = registry_plain.host
    push_layout(first.layout, f"{host}/dict/two:v1", format=None, tls_verify=False)
    push_layout(second.layout, f"{host}/apps/whiteout:v1", format=None, tls_verify=False)
    dictionary = _convert(registry_plain, tmp_path / "w1", f"{host}/dict/two:v1", {})
    result = _convert(
        registry_plain,
        tmp_path / "w2",
        f"{host}/apps/whiteout:v1",
        {"chunk_dict_ref": dictionary.target},
        converter__verify=True,
    )
    assert any(note.startswith("verify:") for note in result.notes), result.notes
    dict_manifest, _, _ = _pull(registry_plain, dictionary.target)
    big_blob, small_blob = (layer["digest"] for layer in dict_manifest["layers"][:2])
    manifest, _, blobs = _pull(registry_plain, result.target)
    layers = [layer["digest"] for layer in manifest["layers"]]
    assert len(layers) == 4 and layers[2] == big_blob and small_blob not in layers
    merged = _boot(gzip.decompress(blobs[layers[-1]]))
    ids = [b.blob_id for b in validate(merged).blobs]
    assert sorted("sha256:" + i for i in ids) == sorted([layers[0], big_blob])
