"""Container start, lazy against full pull (issue 16), with a real registry, containerd and runc.

One image of real files from this machine (gzip -1 layers, about 250 MB uncompressed by default):

1. this machine's python3 with every shared library it and its extension modules load;
2. /usr/lib/python3.11 (the standard library);
3. /usr/lib/python3/dist-packages;
4. part of /usr/lib/go-1.19, which the command never reads.

It is converted to eStargz by ``accel.converter.Converter``; then, in the same run, from the same registry
through the same counting proxy (tests/support/faultproxy.py) and each on a fresh containerd and
snapshotter:

* ``full, overlayfs``: ``ctr images pull`` of the source image, ``ctr run`` with the overlayfs snapshotter;
* ``full, overlayfs (eStargz)``: the same with the converted image (it is valid gzip);
* ``lazy, stargz``: ``lazysnap rpull`` of the converted image through the stargz snapshotter (our Go helper
  around Debian's stargz-snapshotter library, background fetch off, cache settings the library's
  defaults), ``ctr run`` with it.

Timed from the start of the pull to the first line the command prints (it imports a few modules and
prints one line), with the pull and run parts apart; bytes are the layer bytes the registry served by
then (a Python proxy sits in front of the registry for both ways, so absolute times include its cost).

    .venv/bin/python bench/bench_lazy.py [--unread-mb 130] [--repeat N]

Needs root, /dev/fuse, containerd, runc, the Go toolchain and Debian's stargz-snapshotter and go-fuse
packages. Goal: the lazy start reaches the first output sooner than the full pull while fetching only what
the command reads (most of the interpreter's layer, a part of the standard library, none of the unread
layer); the per-layer line shows which.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from accel.converter import Converter  # noqa: E402
from accel.oci import mediatypes as mt  # noqa: E402
from accel.oci.manifest import Manifest  # noqa: E402
from tests.support.configs import make_config  # noqa: E402
from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.images import BuiltImage, build_tree_image, pick_files, push_layout  # noqa: E402
from tests.support.lazypull import (  # noqa: E402
    blob_bytes,
    build_lazysnap,
    fuse_mounts,
    run_container,
    start_lazy_stack,
    why_no_lazy_pull,
)
from tests.support.registry import start_registry  # noqa: E402

WORK = ROOT / ".bench" / "lazy"
BIN = ROOT / ".bench" / "lazysnap-bin"
PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
DIST = Path("/usr/lib/python3/dist-packages")
UNREAD = Path("/usr/lib/go-1.19")
MODULES = "json, email.parser, argparse, asyncio, decimal, http.client, xml.dom.minidom, sqlite3"
COMMAND = ["/usr/bin/python3", "-c", f"import {MODULES}; print('imported', flush=True)"]


@dataclass
class Timing:
    pull: float
    run_to_output: float
    served: int = 0  # layer bytes by the first output (through the counting proxy only)
    per_layer: tuple[int, ...] = ()
    gets: int = 0  # layer blob GETs by then

    @property
    def total(self) -> float:
        return self.pull + self.run_to_output


def _shared_libraries(binaries: list[Path]) -> set[Path]:
    libs: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
        libs.update(Path(p) for p in re.findall(r"(/\S+) \(0x", out))
    return libs


def _stage_runtime(dest: Path) -> list[str]:
    """python3 and the libraries it and its extension modules link, at the paths the loader looks."""
    binaries = [PYTHON, *sorted((STDLIB / "lib-dynload").glob("*.so"))]
    names = []
    for path in [PYTHON, *sorted(_shared_libraries(binaries))]:
        rel = "usr/bin/python3" if path == PYTHON else str(path).lstrip("/")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)  # follows symlinks: the image gets the files under these names
        names.append(rel)
    return names


def _prefixed(root: Path, size: int) -> list[str]:
    base = str(root).lstrip("/")
    return [f"{base}/{name}" if name != "." else base for name in pick_files(root, size)]


def build_image(unread_mb: int) -> BuiltImage:
    shutil.rmtree(WORK, ignore_errors=True)
    runtime = WORK / "runtime"
    trees = [
        (runtime, _stage_runtime(runtime)),
        (Path("/"), _prefixed(STDLIB, 1 << 40)),
        (Path("/"), _prefixed(DIST, 1 << 40)),
        (Path("/"), _prefixed(UNREAD, unread_mb << 20)),
    ]
    return build_tree_image(WORK / "image", trees)


def _registry_layers(url: str, name: str, tag: str) -> dict[str, int]:
    response = httpx.get(f"{url}/v2/{name}/manifests/{tag}", headers={"Accept": mt.OCI_MANIFEST}, timeout=30)
    response.raise_for_status()
    return {layer.digest: layer.size for layer in Manifest.from_json(response.content).layers}


def measure(helper: Path, ref: str, sizes: dict[str, int], lazy: bool, proxy: FaultProxy | None) -> Timing:
    """One start on a fresh containerd and snapshotter; bytes are counted when ``proxy`` serves ``ref``."""
    # The library's default (background cache commits), as a deployed snapshotter runs.
    stack = start_lazy_stack(helper, WORK / f"stack-{time.monotonic_ns()}", sync_cache=False)
    try:
        namespace = stack.namespace()
        if proxy is not None:
            proxy.clear()
        started = time.monotonic()
        if lazy:
            stack.rpull(ref, namespace)
            if not fuse_mounts(stack.snapshotter_root):
                raise RuntimeError("the stargz snapshotter mounted no layer")
        else:
            stack.containerd.ctr(
                "images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref, namespace=namespace
            )
        pulled = time.monotonic() - started

        def counts() -> tuple[int, int, tuple[int, ...]]:
            if proxy is None:
                return 0, 0, ()
            requests = list(proxy.requests)
            gets = sum(
                1 for method, path, _ in requests if method == "GET" and path.rsplit("/", 1)[-1] in sizes
            )
            served = blob_bytes(requests, sizes)
            return sum(served.values()), gets, tuple(served[digest] for digest in sizes)

        run = run_container(
            stack.containerd,
            ref,
            COMMAND,
            namespace=namespace,
            snapshotter="stargz" if lazy else "overlayfs",
            on_first_line=counts,
        )
        if run.output.strip() != "imported":
            raise RuntimeError(f"unexpected output: {run.output!r}")
        assert isinstance(run.at_first_line, tuple)
        served, gets, per_layer = run.at_first_line
        return Timing(pulled, run.first_line_after, served=served, gets=gets, per_layer=per_layer)
    finally:
        stack.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--unread-mb", type=int, default=130, help="size of the layer the command never reads"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each way; the best is printed")
    args = parser.parse_args()
    reason = why_no_lazy_pull()
    if reason is not None:
        print(f"cannot run: {reason}")
        return 1
    BIN.mkdir(parents=True, exist_ok=True)
    built = build_lazysnap(BIN)
    if isinstance(built, str):
        print(f"cannot run: {built}")
        return 1

    print("building the image from this machine's files ...", flush=True)
    image = build_image(args.unread_mb)
    uncompressed = sum(layer.uncompressed_size for layer in image.images[0].layers)
    registry = start_registry("plain", WORK / "registry")
    rows: list[tuple[str, Timing, Timing]] = []
    try:
        with FaultProxy(registry.host) as proxy:
            source = f"{registry.host}/bench/python:src"
            push_layout(image.layout, source, tls_verify=False)
            config = make_config(WORK / "convert", {registry.host: registry.source()}, driver="estargz")
            started = time.monotonic()
            with Converter(config) as converter:
                target = converter.convert(source, target=f"{registry.host}/bench/python:esgz").target
            converted_in = time.monotonic() - started
            source_sizes = {layer.digest: layer.size for layer in image.images[0].layers}
            target_sizes = _registry_layers(registry.url, "bench/python", "esgz")
            ways = [
                ("full, overlayfs", source, source_sizes, False),
                ("full, overlayfs (eStargz)", target, target_sizes, False),
                ("lazy, stargz (eStargz)", target, target_sizes, True),
            ]
            for name, ref, sizes, is_lazy in ways:
                proxied = ref.replace(registry.host, proxy.host, 1)
                counted = [measure(built, proxied, sizes, is_lazy, proxy) for _ in range(args.repeat)]
                direct = [measure(built, ref, sizes, is_lazy, None) for _ in range(args.repeat)]
                rows.append((name, min(direct, key=lambda t: t.total), min(counted, key=lambda t: t.total)))
    finally:
        registry.close()

    print(
        f"\nimage: {len(source_sizes)} layers, {uncompressed / 1e6:.0f} MB uncompressed, "
        f"{sum(source_sizes.values()) / 1e6:.0f} MB gzip -1, "
        f"{sum(target_sizes.values()) / 1e6:.0f} MB eStargz (converted in {converted_in:.1f} s)"
    )
    print(f"command: python3 -c 'import {MODULES}; print(...)'  (best of {args.repeat})")
    print("times in s to the first output, straight from the registry; bytes through the counting proxy\n")
    header = (
        f"{'way':<28}{'pull':>7}{'run→output':>12}{'total':>8}{'via proxy':>11}"
        f"{'served MB':>11}{'of layers':>11}{'GETs':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, best, via in rows:
        layer_bytes = sum((source_sizes if name == "full, overlayfs" else target_sizes).values())
        print(
            f"{name:<28}{best.pull:>7.2f}{best.run_to_output:>12.2f}{best.total:>8.2f}"
            f"{via.total:>11.2f}{via.served / 1e6:>11.1f}{100 * via.served / layer_bytes:>10.1f}%"
            f"{via.gets:>6}"
        )
    layer_names = ("python + libraries", "stdlib", "dist-packages", "unread")
    print(
        "\nlazy, per layer (served / layer MB): "
        + ", ".join(
            f"{name} {got / 1e6:.1f} / {size / 1e6:.1f}"
            for name, got, size in zip(layer_names, rows[-1][2].per_layer, target_sizes.values(), strict=True)
        )
    )
    full, lazy = rows[0][1], rows[-1][1]
    share = rows[-1][2].served / sum(target_sizes.values())
    print(
        f"\nlazy start: {full.total / lazy.total:.1f}x sooner than the full pull, "
        f"fetching {share:.1%} of the layer bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
