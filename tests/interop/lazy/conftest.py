"""The lazy-pull stack for these tests: our stargz snapshotter helper, a private containerd using it, a
counting proxy in front of the plain registry, and a source image with big files the command never reads.

Skips only when /dev/fuse, containerd or the Go toolchain (with Debian's stargz-snapshotter library) is
missing, saying which.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.images import MIB, build_tree_image, pick_files, push_layout
from tests.support.lazypull import (
    LazyStack,
    build_lazycat,
    build_lazysnap,
    lazycat_line,
    start_lazy_stack,
    why_no_lazy_pull,
)
from tests.support.registry import RegistryServer

BIG_FILE = 16 * MIB
# The estargz driver refuses a prioritized file missing from a layer, so every layer has one (the command
# reads the top layer's).
PRIORITIZED = "lib/prio.bin"
PRIORITIZED_SIZE = 512 * 1024


@dataclass(frozen=True)
class LazyTools:
    lazysnap: Path
    lazycat: Path


@dataclass(frozen=True)
class SourceImage:
    ref: str
    command: list[str]
    expected: list[str]  # what the command prints in the source image


@pytest.fixture(scope="session")
def lazy_tools(tmp_path_factory: pytest.TempPathFactory) -> LazyTools:
    reason = why_no_lazy_pull()
    if reason is not None:
        pytest.skip(f"lazy-pull tests need FUSE and containerd: {reason}")
    out = tmp_path_factory.mktemp("lazy-tools")
    built = [build_lazysnap(out), build_lazycat(out)]
    for item in built:
        if isinstance(item, str):
            pytest.skip(f"lazy-pull tests need the Go toolchain: {item}")
    lazysnap, lazycat = built
    assert isinstance(lazysnap, Path) and isinstance(lazycat, Path)
    return LazyTools(lazysnap, lazycat)


@pytest.fixture(scope="module")
def lazy_stack(lazy_tools: LazyTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LazyStack]:
    stack = start_lazy_stack(lazy_tools.lazysnap, tmp_path_factory.mktemp("lazy-stack"))
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def counting_proxy(registry_plain: RegistryServer) -> Iterator[FaultProxy]:
    """What the snapshotter and containerd fetch goes through this proxy, which records every request."""
    with FaultProxy(registry_plain.host) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def lazy_source(
    lazy_tools: LazyTools, registry_plain: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> SourceImage:
    """Three layers, each with a small file the command reads and a 16 MiB incompressible one it does not;
    the top layer replaces a base file; each has its own version of the file the prioritized test names."""
    rnd = random.Random(16)
    layers: list[dict[str, bytes]] = [
        {
            "bin/lazycat": lazy_tools.lazycat.read_bytes(),
            "etc/os-release": b"NAME=base\n",
            "big/base.bin": rnd.randbytes(BIG_FILE),
            PRIORITIZED: rnd.randbytes(PRIORITIZED_SIZE),
        },
        {
            "app/config.txt": b"answer = 42\n",
            "big/app.bin": rnd.randbytes(BIG_FILE),
            PRIORITIZED: rnd.randbytes(PRIORITIZED_SIZE),
        },
        {
            "etc/os-release": b"NAME=top\n",
            "lib/module.txt": b"def hello(): return 'hi'\n",
            PRIORITIZED: rnd.randbytes(PRIORITIZED_SIZE),
            "big/top.bin": rnd.randbytes(BIG_FILE),
        },
    ]
    root = tmp_path_factory.mktemp("lazy-src-trees")
    trees = []
    for index, files in enumerate(layers):
        tree = root / f"layer{index}"
        for name, data in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(data)
            if name.startswith("bin/"):
                (tree / name).chmod(0o755)
        trees.append((tree, pick_files(tree, 1 << 40)))
    image = build_tree_image(tmp_path_factory.mktemp("lazy-src"), trees)
    ref = f"{registry_plain.host}/lazy/source:latest"
    push_layout(image.layout, ref, tls_verify=False)
    read = ["/etc/os-release", "/app/config.txt", "/lib/module.txt", f"/{PRIORITIZED}"]
    merged = {name: data for files in layers for name, data in files.items()}
    expected = [lazycat_line(path, merged[path.lstrip("/")]) for path in read]
    return SourceImage(ref, ["/bin/lazycat", *read], expected)
