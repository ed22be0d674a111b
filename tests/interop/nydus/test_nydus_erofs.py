"""Our Nydus output read by independent EROFS implementations: erofs-utils 1.5 / 1.8.6 and the kernel."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accel.formats.nydus import Options, build_layer, merge, read_blob, read_bootstrap, validate
from tests.interop.nydus.erofs_tools import drop, fsck_extract, gnu_extract, kernel_mount, snapshot, tool186
from tests.support.nydus_layers import Item, make_tar, rich_layer
from tests.support.oci_apply import apply_layers

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("fsck.erofs") is None, reason="erofs-utils is not installed"),
]
DATA = Path(__file__).parents[2] / "data" / "nydus"
SEP_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"


@dataclass
class Built:
    tar: Path
    bootstrap: Path
    device: Path
    xattrs: dict[str, dict[str, bytes]]
    batch_units: int = 0


def _build(tmp: Path, name: str, items: list[Item], opts: Options) -> Built:
    tar = tmp / f"{name}.tar"
    tar.write_bytes(make_tar(items))
    out = io.BytesIO()
    with tar.open("rb") as src:
        build_layer(src, out, opts)
    blob = read_blob(out.getvalue())
    boot = blob.bootstrap()
    assert boot is not None
    bs = validate(boot, {"x" * 64: blob})
    (tmp / f"{name}.boot").write_bytes(boot)
    (tmp / f"{name}.dev").write_bytes(blob.device_image(bs.compressor, bs.devices[0].blocks * 4096))
    xattrs = {
        "/" + it.name.strip("/"): {k: v.encode() for k, v in it.xattrs.items()} for it in items if it.xattrs
    }
    return Built(tar, tmp / f"{name}.boot", tmp / f"{name}.dev", xattrs, len(blob.batches))


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    tmp = tmp_path_factory.mktemp("nydus-erofs")
    items = rich_layer()
    return {
        "zstd": _build(tmp, "zstd", items, Options()),
        "lz4": _build(tmp, "lz4", items, Options(compressor="lz4_block", digester="sha256")),
        "small-chunks": _build(tmp, "small", items, Options(chunk_size=0x10000, compressor="none")),
        "batch": _build(tmp, "batch", items, Options(batch_size=0x100000)),
    }


def _reference(tmp: Path, tar: Path) -> dict[str, dict[str, object]]:
    dest = tmp / "gnu"
    gnu_extract(tar, dest)
    return snapshot(dest)


@pytest.mark.parametrize("name", ["zstd", "lz4", "small-chunks", "batch"])
def test_fsck_15_extract_equals_gnu_tar(layers: dict[str, Built], name: str, tmp_path: Path) -> None:
    built = layers[name]
    fsck_extract(["fsck.erofs"], built.bootstrap, [built.device], tmp_path / "x")
    got = _no_suid(snapshot(tmp_path / "x"))
    want = _no_suid(_reference(tmp_path, built.tar))
    assert drop(got, "mtime") == drop(want, "mtime")
    assert {p: d.get("mtime") for p, d in got.items() if p != "/"} == {
        p: d.get("mtime") for p, d in want.items() if p != "/"
    }


def test_the_batch_layer_has_batch_chunks(layers: dict[str, Built]) -> None:
    """So that the fsck run over it reads files out of batch chunks (the small ones of the rich layer)."""
    assert layers["batch"].batch_units >= 1 and layers["zstd"].batch_units == 0


def _no_suid(snap: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """erofs-utils 1.5 chowns after chmod, which clears set-id bits (1.8.6 and the kernel keep them)."""
    return {p: {**d, "mode": d["mode"] & 0o1777} for p, d in snap.items()}


def test_fsck_15_reads_fixture(tmp_path: Path) -> None:
    fsck_extract(
        ["fsck.erofs"],
        DATA / "v6-separate" / "rafs-v6-2.2.boot",
        [DATA / "v6-separate" / f"{SEP_ID}.uncompressed"],
        tmp_path / "x",
    )
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["lib.rs", "sync_io.rs"]


def test_fsck_186_extract_with_xattrs_and_hardlinks(layers: dict[str, Built], tmp_path: Path) -> None:
    fsck = tool186("fsck.erofs")
    if fsck is None:
        pytest.skip("erofs-utils 1.8.6 could not be fetched from Debian trixie")
    built = layers["zstd"]
    fsck_extract(fsck, built.bootstrap, [built.device], tmp_path / "x", ("--xattrs",))
    got = snapshot(tmp_path / "x", links=True)
    want = snapshot(_gnu(tmp_path, built.tar), links=True)
    assert drop(got, "mtime") == drop(want, "mtime")
    assert got["/a/zz-hardlink-2"]["link"] == got["/a/big.bin"]["link"]
    for path, attrs in built.xattrs.items():
        target = tmp_path / "x" / path.lstrip("/")
        on_disk = {k: os.getxattr(target, k) for k in os.listxattr(target)}
        assert {k: v for k, v in on_disk.items() if k in attrs} == attrs


def _gnu(tmp: Path, tar: Path) -> Path:
    dest = tmp / "gnu"
    gnu_extract(tar, dest)
    return dest


def test_kernel_mount_per_layer(layers: dict[str, Built], tmp_path: Path) -> None:
    built = layers["zstd"]
    with kernel_mount(built.bootstrap, [built.device], tmp_path / "mnt") as mnt:
        if isinstance(mnt, str):
            pytest.skip(mnt)
        got = snapshot(mnt, xattrs=True, links=True)
    want = snapshot(_gnu(tmp_path, built.tar), links=True)
    assert drop(got, "xattrs") == want
    for path, attrs in built.xattrs.items():
        assert got[path]["xattrs"] == attrs
    assert all(not d.get("xattrs") for p, d in got.items() if p not in built.xattrs)


MERGE_LAYERS = [
    [
        Item("./", "dir", mode=0o755, mtime=100),
        Item("a/", "dir", mode=0o755),
        Item("a/x", data=b"x" * 3000),
        Item("a/y", data=b"y"),
        Item("b/", "dir", mode=0o755),
        Item("b/old", data=b"old"),
        Item("c", data=b"file"),
    ],
    [
        Item("./", "dir", mode=0o755, mtime=200),
        Item("a/", "dir", mode=0o700, mtime=300),
        Item("a/.wh.x"),
        Item("b/", "dir", mode=0o755),
        Item("b/.wh..wh..opq"),
        Item("b/new", data=b"new"),
        Item("c/", "dir", mode=0o755),
        Item("c/f", data=b"c became a dir"),
    ],
    [Item("./", "dir", mode=0o755, mtime=400), Item("meta/", "dir", mode=0o755)],
]


def _apply_to_dir(tmp: Path, tars: list[Path]) -> Path:
    """GNU tar extraction of each layer, whiteouts applied per the OCI spec (the reference rootfs)."""
    root = tmp / "oci"
    root.mkdir()
    model = apply_layers([t.read_bytes() for t in tars])
    for i, tar in enumerate(tars):
        stage = tmp / f"stage{i}"
        gnu_extract(tar, stage)
    # Rebuild from the model: paths present in the final model, each taken from the topmost layer having it.
    for path in sorted(model):
        if path == "/":
            continue
        for i in reversed(range(len(tars))):
            src = tmp / f"stage{i}" / path.lstrip("/")
            if src.exists() or src.is_symlink():
                dst = root / path.lstrip("/")
                if src.is_dir() and not src.is_symlink():
                    dst.mkdir(exist_ok=True)
                    shutil.copystat(src, dst)
                else:
                    shutil.copy2(src, dst, follow_symlinks=False)
                break
    for path in sorted(model, reverse=True):
        src_entry = model[path]
        if src_entry.type == "dir":
            target = root / path.lstrip("/")
            os.utime(target, (src_entry.mtime, src_entry.mtime))
            os.chmod(target, src_entry.mode)
    return root


def test_merged_bootstrap_through_fsck_and_kernel(tmp_path: Path) -> None:
    tars: list[Path] = []
    inputs: list[tuple[bytes, str]] = []
    devices: dict[str, Path] = {}
    for i, items in enumerate(MERGE_LAYERS):
        tar = tmp_path / f"l{i}.tar"
        tar.write_bytes(make_tar(items))
        tars.append(tar)
        out = io.BytesIO()
        res = build_layer(io.BytesIO(tar.read_bytes()), out, Options())
        inputs.append((res.bootstrap, res.blob_id))
        blob = read_blob(out.getvalue())
        if blob.chunks:
            dev = tmp_path / f"{res.blob_id}.dev"
            dev.write_bytes(blob.device_image("zstd", res.uncompressed_size))
            devices[res.blob_id] = dev
    boot = tmp_path / "merged.boot"
    boot.write_bytes(merge(inputs))
    bs = read_bootstrap(boot.read_bytes())
    devs = [devices[b.blob_id] for b in bs.blobs]
    want = snapshot(_apply_to_dir(tmp_path, tars))
    fsck_extract(["fsck.erofs"], boot, devs, tmp_path / "x")
    assert drop(snapshot(tmp_path / "x"), "mtime") == drop(want, "mtime")
    with kernel_mount(boot, devs, tmp_path / "mnt") as mnt:
        if isinstance(mnt, str):
            pytest.skip(mnt)
        got = snapshot(mnt)
    assert got == want
    assert stat.S_IMODE(got["/a"]["mode"]) == 0o700


def _overlay_reference(tmp: Path, tars: list[Path], stack: contextlib.ExitStack) -> Path | str:
    """Spec 9.4's independent merge oracle: ``mkfs.erofs --tar=f --aufs`` per layer, stacked by overlayfs."""
    mkfs = tool186("mkfs.erofs")
    if mkfs is None:
        return "erofs-utils 1.8.6 could not be fetched from Debian trixie"
    lowers = []
    for i, tar in enumerate(tars):
        image = tmp / f"aufs{i}.erofs"
        res = subprocess.run(
            [*mkfs, "--tar=f", "--aufs", str(image), str(tar)], capture_output=True, timeout=120
        )
        assert res.returncode == 0, res.stderr
        mnt = stack.enter_context(kernel_mount(image, [], tmp / f"aufs{i}"))
        if isinstance(mnt, str):
            return mnt
        lowers.append(str(mnt))
    merged = tmp / "overlay"
    merged.mkdir()
    opts = "ro,lowerdir=" + ":".join(reversed(lowers))
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], capture_output=True)
    if res.returncode != 0:
        return f"overlay mount not permitted: {res.stderr.decode().strip()}"
    stack.callback(subprocess.run, ["umount", str(merged)], check=False)
    return merged


@pytest.mark.parametrize("which", ["interop", "unit"])
def test_merge_equals_kernel_overlay_of_aufs_images(which: str, tmp_path: Path) -> None:
    from tests.unit.formats.nydus.test_nydus_merge import LAYERS

    layer_items = MERGE_LAYERS if which == "interop" else LAYERS
    tars: list[Path] = []
    inputs: list[tuple[bytes, str]] = []
    devices: dict[str, Path] = {}
    for i, items in enumerate(layer_items):
        tar = tmp_path / f"l{i}.tar"
        tar.write_bytes(make_tar(items))
        tars.append(tar)
        out = io.BytesIO()
        res = build_layer(io.BytesIO(tar.read_bytes()), out, Options())
        inputs.append((res.bootstrap, res.blob_id))
        blob = read_blob(out.getvalue())
        if blob.chunks:
            dev = tmp_path / f"{res.blob_id}.dev"
            dev.write_bytes(blob.device_image("zstd", res.uncompressed_size))
            devices[res.blob_id] = dev
    boot = tmp_path / "merged.boot"
    boot.write_bytes(merge(inputs))
    devs = [devices[b.blob_id] for b in read_bootstrap(boot.read_bytes()).blobs]
    with contextlib.ExitStack() as stack:
        ref = _overlay_reference(tmp_path, tars, stack)
        if isinstance(ref, str):
            pytest.skip(ref)
        want = snapshot(ref)
        mnt = stack.enter_context(kernel_mount(boot, devs, tmp_path / "mnt"))
        if isinstance(mnt, str):
            pytest.skip(mnt)
        got = snapshot(mnt)
    assert got == want
    assert "/a" in got and len(got) >= 8 and not any("/.wh." in p for p in got)
