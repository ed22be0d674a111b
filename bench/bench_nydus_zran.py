"""Nydus OCI-ref (zran) conversion of a large gzip layer: throughput and the bytes it costs the registry.

Usage: .venv/bin/python bench/bench_nydus_zran.py [--layer PATH] [--soci]

Uses the gzip layer of ``/usr/lib`` that bench_soci.py builds and caches in ``.bench/``
(``tar -C /usr -cf - lib | gzip -6``), and times ``build_ref_layer`` on it: one streaming pass (inflate with
block boundaries, tar parse, sha256 per chunk), writing the metadata-only blob. Prints MB/s of uncompressed
input, CPU seconds, peak RSS, and the ref blob's size against the gzip layer (the bytes pushed for the
layer; goal < 3 %). ``--soci`` also times soci's ``build_ztoc`` on the same layer in the same run: both
index through the same inflater.
Goal: >= 250 MB/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from accel.formats.nydus import build_ref_layer  # noqa: E402
from accel.formats.nydus.ondisk import BlobMetaHeader  # noqa: E402
from accel.formats.soci import build_ztoc  # noqa: E402
from accel.formats.zran import library_name  # noqa: E402
from bench_nydus import CountingSink  # noqa: E402
from bench_soci import cpu_seconds, ensure_layer, gunzip_count, peak_rss_mb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=Path, default=None)
    ap.add_argument("--soci", action="store_true", help="also time soci's zTOC build on the same layer")
    args = ap.parse_args()
    layer = args.layer or ensure_layer()
    compressed = layer.stat().st_size
    uncompressed = gunzip_count(layer)
    print(f"layer          {layer} ({compressed / 1e6:.0f} MB gzip, {uncompressed / 1e6:.0f} MB tar)")
    print(f"inflate        {library_name()}, load {os.getloadavg()[0]:.2f}")

    sink = CountingSink()
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    with layer.open("rb") as src:
        build = build_ref_layer(src, sink)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu0
    header = BlobMetaHeader.decode(build.blob_meta[-4096:])
    rate = uncompressed / 1e6 / elapsed
    print(
        f"zran           {rate:.0f} MB/s of tar ({elapsed:.2f} s wall, {cpu:.2f} s CPU, goal >= 250 MB/s), "
        f"{build.chunk_count} chunks, {header.zran_count} contexts, {build.files} files"
    )
    ratio = 100 * sink.size / compressed
    print(f"ref blob       {sink.size / 1e6:.2f} MB = {ratio:.2f} % of the gzip layer (goal < 3 %)")
    meta_zstd, meta_raw = header.ci_compressed_size / 1e6, header.ci_uncompressed_size / 1e6
    print(f"  blob meta    {meta_zstd:.2f} MB zstd of {meta_raw:.2f} MB")
    print(f"  bootstrap    {len(build.bootstrap) / 1e6:.2f} MB uncompressed")
    print(f"peak RSS       {peak_rss_mb():.0f} MB, load {os.getloadavg()[0]:.2f} after")
    if args.soci:
        cpu0 = cpu_seconds()
        started = time.perf_counter()
        with layer.open("rb") as src:
            ztoc = build_ztoc(src)
        soci_elapsed = time.perf_counter() - started
        print(
            f"soci zTOC      {uncompressed / 1e6 / soci_elapsed:.0f} MB/s ({soci_elapsed:.2f} s wall, "
            f"{cpu_seconds() - cpu0:.2f} s CPU), zTOC {ztoc.size / 1e6:.2f} MB; zran/soci time "
            f"{elapsed / soci_elapsed:.2f}"
        )


if __name__ == "__main__":
    main()
