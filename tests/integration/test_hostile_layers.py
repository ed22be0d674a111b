"""Hostile or broken layers, through the whole pipeline: every layer driver fails the conversion with a
reason naming the layer digest and the tar entry, and no target tag appears."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest

from accel.converter import Converter
from accel.errors import FormatError, NotFoundError
from accel.oci import mediatypes as mt
from accel.oci.layout import OCILayout
from accel.oci.manifest import Descriptor, ImageConfig, Manifest
from tests.support.configs import make_config
from tests.support.images import push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _hostile(case: str) -> tuple[bytes, bytes, str]:
    """(gzip layer, uncompressed tar, the entry the error must name)."""
    if case == "escape":
        escape = _tar([("ok.txt", b"fine"), ("../escape", b"boom")])
        return gzip.compress(escape, mtime=0), escape, "../escape"
    # Incompressible content, so the cut lands inside victim.bin's data rather than in read-ahead.
    big = _tar([("first.txt", b"a" * 1000), ("victim.bin", random.Random(5).randbytes(4 << 20))])
    packed = gzip.compress(big, compresslevel=1, mtime=0)
    return packed[: len(packed) // 2], big, "victim.bin"


def _one_layer_image(dest: Path, layer: bytes, diff_id: str) -> None:
    layout = OCILayout(dest).init()
    digest = layout.write_blob(layer)
    config = ImageConfig(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "hostile"}],
        }
    )
    config_desc = config.descriptor(mt.OCI_CONFIG)
    layout.write_blob(config.to_bytes(), config_desc.digest)
    manifest = Manifest(
        config=config_desc,
        layers=[Descriptor(mt.OCI_LAYER_GZIP, digest, len(layer))],
        media_type=mt.OCI_MANIFEST,
    )
    layout.tag(layout.write_document(manifest), "latest")


@pytest.mark.parametrize("driver", ["estargz", "zstdchunked", "nydus"])
@pytest.mark.parametrize("case", ["escape", "truncated"])
def test_hostile_layer_fails_naming_layer_and_entry(
    registry_plain: RegistryServer, tmp_path: Path, case: str, driver: str
) -> None:
    layer, tar, entry = _hostile(case)
    _one_layer_image(tmp_path / "src", layer, "sha256:" + hashlib.sha256(tar).hexdigest())
    source = f"{registry_plain.host}/hostile/{driver}-{case}:v1"
    push_layout(tmp_path / "src", source, format=None, tls_verify=False)
    config = make_config(
        tmp_path / "work", {registry_plain.host: registry_plain.source()}, driver=driver, tag_suffix="-x"
    )
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    with Converter(config) as converter:
        with pytest.raises(FormatError) as info:
            converter.convert(source)
        with pytest.raises(NotFoundError):
            converter.client.get_manifest(registry_plain.host, f"hostile/{driver}-{case}", "v1-x")
    err = info.value
    assert err.layer == layer_digest, str(err)
    assert err.entry == entry, str(err)
    assert layer_digest in str(err) and entry in str(err)
