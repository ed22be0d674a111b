"""Lazy pulling with the real stargz snapshotter, for the lazy-pull tests and bench/bench_lazy.py.

* :func:`build_lazysnap`: our Go helper (tests/support/go/lazysnap), built against Debian's
  stargz-snapshotter library; ``lazysnap serve`` is a containerd proxy snapshotter (background fetch off
  unless asked for), ``lazysnap rpull`` pulls an image and unpacks it through that snapshotter with the
  stargz labels, as ``ctr-remote image rpull`` does (Debian does not ship ctr-remote).
* :func:`build_lazycat`: a static program for the test images that prints ``<path> <size> <sha256>`` of
  each file it reads (:func:`lazycat_line` gives the same line from the file's bytes).
* :class:`LazyStack`: the snapshotter and a private containerd that has it as the ``stargz`` proxy
  plugin; stopped together, leaving no FUSE mount behind.
* :func:`blob_bytes`: layer bytes a registry served, per blob, from a FaultProxy's recorded requests.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.containerd import CTR, Containerd, containerd_available, start_containerd
from tests.support.gohelper import build_go_helper

GO_SOURCES = Path(__file__).resolve().parent / "go"
LIBRARY = "github.com/containerd/stargz-snapshotter/snapshot"
PACKAGES = "golang-github-containerd-stargz-snapshotter-dev golang-github-hanwen-go-fuse-dev"
SNAPSHOTTER = "stargz"


def build_lazysnap(out_dir: Path) -> Path | str:
    """Build the snapshotter helper; returns its path, or why it cannot be built."""
    return build_go_helper(GO_SOURCES / "lazysnap", out_dir / "lazysnap", LIBRARY, PACKAGES)


def build_lazycat(out_dir: Path) -> Path | str:
    return build_go_helper(GO_SOURCES / "lazycat", out_dir / "lazycat", LIBRARY, PACKAGES)


def lazycat_line(path: str, data: bytes) -> str:
    return f"{path} {len(data)} {hashlib.sha256(data).hexdigest()}"


def why_no_lazy_pull() -> str | None:
    """Why containers cannot be started lazily here, or None when they can (FUSE and containerd)."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is absent or not usable (the stargz snapshotter mounts layers with FUSE)"
    if not containerd_available():
        return "containerd is not installed (apt-get install containerd runc)"
    return None


def fuse_mounts(under: Path) -> list[tuple[str, str]]:
    """(mount point, file system type) of every FUSE mount below ``under``."""
    prefix = str(under.resolve()) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        # Optional fields end at "-"; the file system type follows it.
        fstype = fields[fields.index("-") + 1]
        point = fields[4].replace("\\040", " ")
        if fstype.startswith("fuse") and point.startswith(prefix):
            found.append((point, fstype))
    return found


def _unmount_all(under: Path) -> None:
    for point, _ in sorted(fuse_mounts(under), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@dataclass
class ContainerRun:
    """What ``ctr run`` printed, when its first line arrived (seconds after start) and what the
    ``on_first_line`` callback returned then."""

    output: str
    first_line_after: float
    at_first_line: object = None


@dataclass
class LazyStack:
    root: Path
    helper: Path
    snapshotter: subprocess.Popen[bytes]
    containerd: Containerd
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def snapshotter_root(self) -> Path:
        return self.root / "stargz"

    def namespace(self) -> str:
        return f"lazy{next(self._names)}"

    def rpull(self, ref: str, namespace: str, timeout: float = 120) -> str:
        """Pull ``ref`` through the stargz snapshotter (layers become FUSE mounts); returns its digest."""
        args = ["-address", str(self.containerd.socket), "-namespace", namespace]
        proc = subprocess.run(
            [str(self.helper), "rpull", *args, ref],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rpull {ref} failed: {proc.stderr.strip()[-3000:]}\n{self.logs()}")
        return proc.stdout.strip()

    def logs(self) -> str:
        parts = []
        for name in ("snapshotter.log", "containerd/containerd.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        try:
            self.containerd.close()
        finally:
            self.snapshotter.terminate()
            try:
                self.snapshotter.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.snapshotter.kill()
                self.snapshotter.wait()
            if self.snapshotter.stdout is not None:
                self.snapshotter.stdout.close()
            # The helper unmounts its layers on SIGTERM; this catches a helper that died first.
            _unmount_all(self.snapshotter_root)


def start_lazy_stack(
    helper: Path, root: Path, *, background_fetch: bool = False, sync_cache: bool = True
) -> LazyStack:
    """Start the snapshotter helper, then containerd with it as the ``stargz`` proxy plugin.

    ``sync_cache`` commits fetched data to the snapshotter's cache before a read returns (the library's
    default commits in the background, so a read racing a prefetch may fetch the same bytes twice)."""
    root.mkdir(parents=True, exist_ok=True)
    socket = root / "snapshotter.sock"
    args = [str(helper), "serve", "-root", str(root / "stargz"), "-address", str(socket)]
    if background_fetch:
        args.append("-background-fetch")
    if sync_cache:
        args.append("-sync-cache")
    with (root / "snapshotter.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    assert process.stdout is not None
    # The helper prints "ready" once its socket listens, or exits (closing stdout) when it cannot.
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = process.stdout.readline() if selector.select(timeout=60) else b""
    if ready.strip() != b"ready":
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(f"lazysnap serve did not start: {(root / 'snapshotter.log').read_text()[-2000:]}")
    try:
        containerd = start_containerd(root / "containerd", {SNAPSHOTTER: socket})
    except BaseException:
        process.terminate()
        process.wait()
        raise
    return LazyStack(root, helper, process, containerd)


def run_container(
    containerd: Containerd,
    ref: str,
    args: Sequence[str],
    *,
    namespace: str,
    snapshotter: str = SNAPSHOTTER,
    on_first_line: Callable[[], object] | None = None,
    timeout: float = 120,
) -> ContainerRun:
    """``ctr run --rm`` of ``args`` in ``ref``; the container is killed and removed if it outlives
    ``timeout`` (then ctr exits non-zero). Timing starts when ctr is started."""
    assert CTR is not None
    name = f"c{time.monotonic_ns()}"
    base = [CTR, "-a", str(containerd.socket), "-n", namespace]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*base, "run", "--rm", "--snapshotter", snapshotter, ref, name, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda err=proc.stderr: stderr.append(err.read()), daemon=True)
    reader.start()
    killer = threading.Timer(timeout, _kill_container, (base, name, proc))
    killer.start()
    try:
        first = proc.stdout.readline()
        first_after = time.monotonic() - started
        at_first = on_first_line() if on_first_line is not None and first else None
        rest = proc.stdout.read()
        code = proc.wait()
    finally:
        killer.cancel()
        reader.join(timeout=10)
    if code != 0:
        message = b"".join(stderr).decode(errors="replace")[-2000:]
        raise RuntimeError(f"ctr run {ref} {' '.join(args)} exited {code}: {message}")
    return ContainerRun((first + rest).decode(), first_after, at_first)


def _kill_container(base: list[str], name: str, proc: subprocess.Popen[bytes]) -> None:
    # Killing the task lets `ctr run --rm` remove the task and container itself (and the shim exit).
    subprocess.run([*base, "task", "kill", "-s", "KILL", name], capture_output=True, check=False, timeout=30)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------------------------------- byte counting

_BLOB_PATH = re.compile(r"/blobs/(sha256:[0-9a-f]{64})$")
Request = tuple[str, str, Mapping[str, str]]  # FaultProxy.requests: (method, path, range headers)


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) byte ranges of a ``Range: bytes=a-b,c-,-n`` header on ``size`` bytes."""
    ranges = []
    for part in header.split("=", 1)[1].split(","):
        first, _, last = part.strip().partition("-")
        if not first:
            ranges.append((max(size - int(last), 0), size - 1))
        else:
            ranges.append((int(first), min(int(last), size - 1) if last else size - 1))
    return ranges


def requested_ranges(requests: Iterable[Request], digest: str, size: int) -> list[tuple[int, int]]:
    """The byte ranges of blob ``digest`` that GETs asked for, in request order (a plain GET is the
    whole blob)."""
    ranges: list[tuple[int, int]] = []
    for method, path, headers in requests:
        match = _BLOB_PATH.search(path)
        if method != "GET" or match is None or match.group(1) != digest:
            continue
        header = next((v for k, v in headers.items() if k.lower() == "range"), "")
        ranges.extend(_parse_ranges(header, size) if header else [(0, size - 1)])
    return ranges


def blob_bytes(requests: Iterable[Request], sizes: Mapping[str, int]) -> dict[str, int]:
    """Bytes of each blob in ``sizes`` (digest -> size) that the GETs in ``requests`` asked for (counted
    from their Range headers: the registry honours them). Blobs nobody fetched are 0."""
    requests = list(requests)
    return {
        digest: sum(hi - lo + 1 for lo, hi in requested_ranges(requests, digest, size))
        for digest, size in sizes.items()
    }
