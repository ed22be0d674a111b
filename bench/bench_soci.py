"""SOCI zTOC builder throughput on a large gzip layer.

Usage: .venv/bin/python bench/bench_soci.py [--span-size 4194304] [--verify] [--layer PATH]

Builds once, and caches in ``.bench/`` (git-ignored), a gzip layer of ``/usr/lib``
(``tar -C /usr -cf - lib | gzip -6``), then times ``build_ztoc`` on it (one streaming pass: inflate with
checkpoints, span digests, Go-compatible tar parse, flatbuffer). Prints MB/s of uncompressed input, the
process's peak RSS and the zTOC size; ``--verify`` also times ``verify_ztoc`` on the result.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from accel.formats.soci import DEFAULT_SPAN_SIZE, build_ztoc, inflate_library, verify_ztoc  # noqa: E402

CACHE = ROOT / ".bench"
LAYER = CACHE / "soci-usr-lib.tar.gz"


def ensure_layer() -> Path:
    if LAYER.exists():
        return LAYER
    CACHE.mkdir(exist_ok=True)
    tmp = LAYER.with_suffix(".tmp")
    print(f"building {LAYER} (tar -C /usr -cf - lib | gzip -6), once ...", flush=True)
    with open(tmp, "wb") as out:
        tar = subprocess.Popen(
            ["tar", "-C", "/usr", "-cf", "-", "lib"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        subprocess.run(["gzip", "-6"], stdin=tar.stdout, stdout=out, check=True)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
    tmp.rename(LAYER)
    return LAYER


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def gunzip_count(path: Path) -> int:
    total = 0
    with open(path, "rb") as f:
        d = zlib.decompressobj(47)
        while chunk := f.read(1 << 16):
            while chunk:
                total += len(d.decompress(chunk))
                if not d.eof:
                    break
                chunk = d.unused_data
                d = zlib.decompressobj(47)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--span-size", type=int, default=DEFAULT_SPAN_SIZE)
    parser.add_argument("--verify", action="store_true", help="also time verify_ztoc")
    parser.add_argument("--layer", type=Path, help="a gzip layer to use instead of the cached /usr/lib one")
    parser.add_argument("--baseline", action="store_true", help="also time a plain zlib gunzip of the layer")
    args = parser.parse_args()
    layer = args.layer or ensure_layer()
    size = layer.stat().st_size

    start, cpu = time.perf_counter(), cpu_seconds()
    with open(layer, "rb") as f:
        ztoc = build_ztoc(f, span_size=args.span_size)
        data = ztoc.to_bytes()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    raw = ztoc.uncompressed_archive_size
    print(
        f"layer          {layer} ({size / 1e6:.1f} MB gzip, {raw / 1e6:.1f} MB tar, {len(ztoc.toc)} entries)"
    )
    print(
        f"build_ztoc     {elapsed:.2f} s  {raw / elapsed / 1e6:.1f} MB/s of uncompressed input (wall clock)"
    )
    # On a shared machine the wall clock mostly measures other processes; CPU time is this one's own cost.
    print(f"               {cpu:.2f} s CPU  {raw / cpu / 1e6:.1f} MB/s per CPU-second")
    print(f"inflate        {inflate_library()}")
    print(f"ztoc           {len(data) / 1e6:.2f} MB, {ztoc.max_span_id + 1} spans of {args.span_size} B")
    print(f"peak RSS       {peak_rss_mb():.1f} MB (after build)")
    if args.baseline:
        start, cpu = time.perf_counter(), cpu_seconds()
        total = gunzip_count(layer)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        print(
            f"plain gunzip   {elapsed:.2f} s  {total / elapsed / 1e6:.1f} MB/s, "
            f"{cpu:.2f} s CPU {total / cpu / 1e6:.1f} MB/s per CPU-second (zlib only)"
        )
    if args.verify:
        start, cpu = time.perf_counter(), cpu_seconds()
        with open(layer, "rb") as f:
            report = verify_ztoc(data, f)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        print(
            f"verify_ztoc    {elapsed:.2f} s  {raw / elapsed / 1e6:.1f} MB/s ({report.spans} spans checked)"
        )
        print(f"               {cpu:.2f} s CPU  {raw / cpu / 1e6:.1f} MB/s per CPU-second")
        print(f"peak RSS       {peak_rss_mb():.1f} MB (after verify)")


if __name__ == "__main__":
    main()
