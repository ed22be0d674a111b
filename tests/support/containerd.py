"""A real consumer: Debian's containerd, started for the tests on a private socket and root.

Images are pulled with ``ctr images pull --snapshotter native`` and unpacked by containerd itself; the
native snapshotter keeps each snapshot as a plain directory, so the unpacked tree is read straight from
disk (a read-only view's bind-mount source) without mounting anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")


def containerd_available() -> bool:
    return CONTAINERD is not None and CTR is not None


@dataclass
class Containerd:
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    def ctr(self, *args: str, timeout: float = 300, namespace: str = "default") -> str:
        assert CTR is not None
        proc = subprocess.run(
            [CTR, "-a", str(self.socket), "-n", namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def unpack(self, ref: str, *, plain_http: bool = True) -> Path:
        """Pull and unpack ``ref`` in a namespace of its own; returns the directory of its root filesystem."""
        namespace = f"t{time.monotonic_ns()}"
        flags = ["--plain-http"] if plain_http else []
        self.ctr("images", "pull", *flags, "--snapshotter", "native", ref, namespace=namespace)
        # In a fresh namespace the image's top layer is the one committed snapshot nobody builds on.
        rows = [
            line.split()
            for line in self.ctr(
                "snapshots", "--snapshotter", "native", "ls", namespace=namespace
            ).splitlines()[1:]
        ]
        parents = {row[1] for row in rows if len(row) == 3}
        tops = [row[0] for row in rows if row[-1] == "Committed" and row[0] not in parents]
        if len(tops) != 1:
            raise RuntimeError(f"expected one top snapshot for {ref}, found {tops}")
        view = "view-" + namespace
        self.ctr("snapshots", "--snapshotter", "native", "view", view, tops[0], namespace=namespace)
        out = self.ctr("snapshots", "--snapshotter", "native", "mounts", "/unused", view, namespace=namespace)
        match = re.search(r"mount -t \S+ (\S+) ", out)
        if match is None:
            raise RuntimeError(f"cannot find the snapshot directory in: {out!r}")
        return Path(match.group(1))

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_containerd(root: Path, snapshot_proxies: dict[str, Path] | None = None) -> Containerd:
    """Start containerd with state under ``root`` (CRI off). Raises RuntimeError when it cannot start.

    ``snapshot_proxies`` names proxy snapshotters (name -> the unix socket they serve the snapshots API on).
    """
    assert CONTAINERD is not None
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    proxies = "".join(
        f'[proxy_plugins.{name}]\n  type = "snapshot"\n  address = "{socket}"\n'
        for name, socket in (snapshot_proxies or {}).items()
    )
    config.write_text(
        "version = 2\n"
        f'root = "{root / "root"}"\n'
        f'state = "{root / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{root / "containerd.sock"}"\n'
        # Garbage collection would remove the read-only views the tests create without a lease.
        '[plugins."io.containerd.gc.v1.scheduler"]\n'
        "  deletion_threshold = 0\n"
        "  mutation_threshold = 1000000000\n"
        '  schedule_delay = "0s"\n'
        '  startup_delay = "1h"\n' + proxies
    )
    log = (root / "containerd.log").open("wb")
    process = subprocess.Popen([CONTAINERD, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    daemon = Containerd(root, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"containerd exited: {(root / 'containerd.log').read_text()[-2000:]}")
        if daemon.socket.exists():
            try:
                daemon.ctr("version", timeout=10)
                return daemon
            except RuntimeError:
                pass
        time.sleep(0.1)
    daemon.close()
    raise RuntimeError("containerd did not become ready within 30 s")


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    digest: str
    link: str
    rdev: int
    mtime: int
    xattrs: tuple[tuple[str, bytes], ...]


def snapshot_tree(root: Path) -> dict[str, Node]:
    """Every path under ``root`` with what an unpacked layer must preserve (hardlinks by shared digest)."""
    tree: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            mode = info.st_mode
            kind = {
                stat.S_IFREG: "file",
                stat.S_IFDIR: "dir",
                stat.S_IFLNK: "symlink",
                stat.S_IFCHR: "char",
                stat.S_IFBLK: "block",
                stat.S_IFIFO: "fifo",
            }.get(stat.S_IFMT(mode), "other")
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else ""
            try:
                names = sorted(os.listxattr(path, follow_symlinks=False))
                xattrs = tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
            except OSError:
                xattrs = ()
            tree[rel] = Node(
                kind,
                stat.S_IMODE(mode),
                info.st_uid,
                info.st_gid,
                info.st_size if kind == "file" else 0,
                digest,
                os.readlink(path) if kind == "symlink" else "",
                info.st_rdev if kind in ("char", "block") else 0,
                int(info.st_mtime) if kind != "dir" else 0,
                xattrs,
            )
    return tree
