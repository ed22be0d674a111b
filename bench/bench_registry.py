"""Registry client throughput: push and pull one large blob to a local docker-registry over loopback.

Usage: .venv/bin/python bench/bench_registry.py [--size-mb 1024] [--chunk-mb 0] [--dir /dev/shm]

Prints MB/s for push and pull (MB = 10**6 bytes of blob), the blob size and peak RSS. The blob is streamed
from and to files, so RSS stays far below the blob size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accel.config import RegistryClientConfig
from accel.registry import RegistryClient
from tests.support.registry import registry_available, start_registry

_BLOCK = 4 << 20


def make_blob(path: Path, size: int) -> str:
    """Random-ish content cheaply: a few random blocks, each repeated with a changing prefix."""
    pool = [os.urandom(_BLOCK) for _ in range(4)]
    sha = hashlib.sha256()
    written = 0
    with path.open("wb") as out:
        index = 0
        while written < size:
            block = index.to_bytes(8, "big") + pool[index % len(pool)][8:]
            block = block[: size - written]
            out.write(block)
            sha.update(block)
            written += len(block)
            index += 1
    return "sha256:" + sha.hexdigest()


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of ``pid`` from /proc (0 when unavailable)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="blob size in MiB (default 1024)")
    parser.add_argument("--chunk-mb", type=int, default=0, help="chunked upload size in MiB (0: monolithic)")
    parser.add_argument(
        "--dir", default=None, help="work folder (blob, registry storage); e.g. /dev/shm to take the disk out"
    )
    args = parser.parse_args()
    if not registry_available():
        print("docker-registry is not installed; nothing to measure", file=sys.stderr)
        return 1
    size = args.size_mb << 20
    with tempfile.TemporaryDirectory(prefix="bench-registry-", dir=args.dir) as tmp:
        root = Path(tmp)
        blob = root / "blob"
        t0 = time.perf_counter()
        digest = make_blob(blob, size)
        print(f"generated {size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f}s ({digest[:19]}...)")
        server = start_registry("plain", root / "registry")
        settings = RegistryClientConfig(upload_chunk_size=args.chunk_mb << 20, timeout=300)
        try:
            with RegistryClient({server.host: server.source()}, settings) as client:
                pid = server.pid
                t0, c0, r0 = time.perf_counter(), cpu_seconds(), cpu_seconds(pid)
                outcome = client.push_blob(server.host, "bench/blob", digest, size, lambda: blob.open("rb"))
                push_s = time.perf_counter() - t0
                push_cpu, push_reg = cpu_seconds() - c0, cpu_seconds(pid) - r0
                assert outcome == "uploaded", outcome
                pulled = root / "pulled"
                t0, c0, r0 = time.perf_counter(), cpu_seconds(), cpu_seconds(pid)
                with pulled.open("wb") as sink:
                    client.pull_blob(server.host, "bench/blob", digest, size, sink)
                pull_s = time.perf_counter() - t0
                pull_cpu, pull_reg = cpu_seconds() - c0, cpu_seconds(pid) - r0
                assert pulled.stat().st_size == size
        finally:
            server.close()
    mode = f"chunked {args.chunk_mb} MiB" if args.chunk_mb else "monolithic"
    gb = size / 1e9
    for name, secs, cpu, reg in (
        (f"push ({mode})", push_s, push_cpu, push_reg),
        ("pull (verified)", pull_s, pull_cpu, pull_reg),
    ):
        print(
            f"{name:22} {size / 1e6 / secs:8.1f} MB/s  ({secs:.2f}s; client CPU {cpu / gb:.2f} s/GB,"
            f" registry CPU {reg / gb:.2f} s/GB)"
        )
    print(f"blob size: {size} bytes; peak RSS: {peak_rss_mb():.1f} MB; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
