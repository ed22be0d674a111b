"""Helpers for the EROFS oracles: erofs-utils 1.5 (system), 1.8.6 (unpacked from trixie), the kernel."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).parents[3]
CACHE_186 = REPO / ".bench" / "erofs-utils-1.8.6"
_DEBS = "erofs-utils libc6 libdeflate0 liblz4-1 liblzma5 libselinux1 libuuid1 libxxhash0 libzstd1 zlib1g"
_DEBS += " libpcre2-8-0"


def _run(cmd: list[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def erofs186() -> list[str] | None:
    """The command prefix running erofs-utils 1.8.6 with trixie's loader, fetching it once if needed."""
    lib = CACHE_186 / "unpacked" / "usr" / "lib" / "x86_64-linux-gnu"
    loader = lib / "ld-linux-x86-64.so.2"
    if not loader.exists() and not _fetch_186():
        return None
    prefix = [str(loader), "--library-path", f"{lib}:{CACHE_186 / 'unpacked' / 'lib' / 'x86_64-linux-gnu'}"]
    probe = _run([*prefix, str(CACHE_186 / "unpacked" / "usr" / "bin" / "fsck.erofs"), "-V"])
    return prefix if probe.returncode == 0 and "1.8" in probe.stdout else None


def tool186(name: str) -> list[str] | None:
    prefix = erofs186()
    return None if prefix is None else [*prefix, str(CACHE_186 / "unpacked" / "usr" / "bin" / name)]


def _fetch_186() -> bool:
    """The spec's recipe (9.3): private apt lists and cache, packages unpacked, the system untouched."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return False
    r = CACHE_186
    for sub in ("apt/lists/partial", "apt/cache/archives/partial", "apt/sources.list.d", "debs", "unpacked"):
        (r / sub).mkdir(parents=True, exist_ok=True)
    mirror = _debian_mirror()
    if mirror is None:
        return False
    (r / "apt" / "sources.list").write_text(f"deb {mirror} trixie main\n")
    opts = [
        f"-oDir::Etc::SourceList={r / 'apt' / 'sources.list'}",
        f"-oDir::Etc::SourceParts={r / 'apt' / 'sources.list.d'}",
        f"-oDir::State::Lists={r / 'apt' / 'lists'}",
        f"-oDir::Cache={r / 'apt' / 'cache'}",
    ]
    try:
        if _run(["apt-get", *opts, "update"], timeout=300).returncode != 0:
            return False
        got = subprocess.run(
            ["apt-get", *opts, "download", *_DEBS.split()], cwd=r / "debs", capture_output=True, timeout=300
        )
        if got.returncode != 0:
            return False
        for deb in (r / "debs").glob("*.deb"):
            if _run(["dpkg-deb", "-x", str(deb), str(r / "unpacked")]).returncode != 0:
                return False
    except (OSError, subprocess.TimeoutExpired):
        return False
    return True


def _debian_mirror() -> str | None:
    """The Debian archive this machine's apt already uses (trixie is taken from the same place)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            uris = words[1:] if words[:1] == ["URIs:"] else words[1:2] if words[:1] == ["deb"] else []
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    return None


def fsck_extract(
    fsck: list[str], bootstrap: Path, devices: list[Path], dest: Path, extra: tuple[str, ...] = ()
) -> None:
    cmd = [*fsck, *[f"--device={d}" for d in devices], *extra, f"--extract={dest}", str(bootstrap)]
    res = _run(cmd)
    assert res.returncode == 0, f"{cmd}: {res.stdout}{res.stderr}"


def gnu_extract(tar: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    res = _run(
        ["tar", "--xattrs", "--xattrs-include=*", "-xpf", str(tar), "--numeric-owner", "-C", str(dest)]
    )
    assert res.returncode == 0, res.stderr


def snapshot(root: Path, *, xattrs: bool = False, links: bool = False) -> dict[str, dict[str, Any]]:
    """Names, types, modes, owners, sizes, contents, targets, mtimes (and xattrs / hardlink groups)."""
    out: dict[str, dict[str, Any]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, *([""] if Path(dirpath) == root else [])]:
            path = Path(dirpath) / name if name else root
            st = path.lstat()
            rel = "/" + str(path.relative_to(root)) if name else "/"
            item: dict[str, Any] = {"fmt": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode)}
            item.update(uid=st.st_uid, gid=st.st_gid)
            if stat.S_ISREG(st.st_mode):
                item["size"] = st.st_size
                item["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                if links:
                    inodes.setdefault(st.st_ino, []).append(rel)
                    item["ino"] = st.st_ino
            if stat.S_ISLNK(st.st_mode):
                item["target"] = os.readlink(path)
            else:
                item["mtime"] = int(st.st_mtime)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                item["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if xattrs and not stat.S_ISLNK(st.st_mode):
                item["xattrs"] = {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path)}
            out[rel] = item
    for item in out.values():
        if "ino" in item:
            item["link"] = min(inodes[item.pop("ino")])
    return out


def drop(snap: dict[str, dict[str, Any]], *keys: str) -> dict[str, dict[str, Any]]:
    return {p: {k: v for k, v in d.items() if k not in keys} for p, d in snap.items()}


@contextlib.contextmanager
def kernel_mount(bootstrap: Path, devices: list[Path], mnt: Path) -> Iterator[Path | str]:
    """Yields the mount point, or a reason string when loop devices or mounting are not permitted."""
    loops: list[str] = []
    mounted = False
    try:
        for f in [bootstrap, *devices]:
            res = _run(["losetup", "-f", "--show", "-r", str(f)])
            if res.returncode != 0:
                yield f"losetup not permitted: {res.stderr.strip()}"
                return
            loops.append(res.stdout.strip())
        mnt.mkdir(parents=True, exist_ok=True)
        opts = ",".join(["ro", *[f"device={d}" for d in loops[1:]]])
        res = _run(["mount", "-t", "erofs", "-o", opts, loops[0], str(mnt)])
        if res.returncode != 0:
            yield f"mount -t erofs not permitted: {res.stderr.strip()}"
            return
        mounted = True
        yield mnt
    finally:
        if mounted:
            _run(["umount", str(mnt)])
        for loop in loops:
            _run(["losetup", "-d", loop])
