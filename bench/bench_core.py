"""Core pipeline benchmark: an image with a 1 GB layer through the converter, both directions.

1. ``oci:`` layout → registry (the layer is uploaded: push throughput);
2. registry → another registry repository... would be a mount, so instead registry → ``oci:`` layout
   (the layer is downloaded into the content store and copied out: pull throughput).

Each conversion runs in its own ``accelctl convert`` process, so its peak RSS is measured alone
(``RUSAGE_CHILDREN`` after the child exits). Goal: ≥ 200 MB/s each way, peak RSS < 150 MB.
3. the same 1 GB layer converted by each driver of ``--drivers`` (layout → layout, a process each): peak
   RSS (goal < 150 MB) and MB/s of uncompressed input.

    .venv/bin/python bench/bench_core.py [--size-mb 1024] [--drivers estargz,nydus]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.configs import write_config  # noqa: E402
from tests.support.images import build_rich_image  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

CACHE = ROOT / ".bench"


# Runs accelctl in a child that reports its own peak RSS (KiB) on stderr when it exits. VmHWM, not
# ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's peak.
_MEASURED = (
    "import re, sys\n"
    "from accel.cli.accelctl import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print(re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def convert(
    config: Path, source: str, target: str, driver: str | None = None
) -> tuple[dict[str, object], float, int]:
    started = time.perf_counter()
    chosen = ["--driver", driver] if driver else []
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURED,
            "convert",
            "--config",
            str(config),
            "--output",
            "json",
            *chosen,
            "--target",
            target,
            source,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"accelctl convert {driver or ''} failed: {proc.stderr.strip()[-1500:]}")
    seconds = time.perf_counter() - started
    return json.loads(proc.stdout), seconds, int(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the big layer's payload")
    parser.add_argument("--drivers", default="estargz,nydus", help="comma-separated")
    args = parser.parse_args()
    work = CACHE / "core"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = args.size_mb << 20
    print(f"building an image with a {args.size_mb} MiB uncompressed layer ...", flush=True)
    image = build_rich_image(
        work / "src", compression="none", payload_size=size, payload_file_size=64 << 20, big_zero_size=1 << 20
    )
    layer_bytes = sum(layer.size for layer in image.images[0].layers)
    registry = start_registry("plain", work / "registry")
    try:
        config = write_config(work / "c.yaml", work / "store", {registry.host: registry.source()})
        target = f"{registry.host}/bench/big:v1"
        push, push_s, push_rss = convert(config, image.ref, target)
        shutil.rmtree(work / "store", ignore_errors=True)
        pull, pull_s, pull_rss = convert(config, target, f"oci:{work / 'out'}:v1")
    finally:
        registry.close()
    mb = layer_bytes / 1e6
    print(f"image: {mb:.0f} MB of layers")
    print(
        f"push  (layout → registry): {push['bytes_out'] / 1e6 / push_s:7.1f} MB/s "  # type: ignore[operator]
        f"({push_s:.2f} s wall incl. start-up), peak RSS {push_rss / 1024:.0f} MiB"
    )
    print(
        f"pull  (registry → layout): {pull['bytes_in'] / 1e6 / pull_s:7.1f} MB/s "  # type: ignore[operator]
        f"({pull_s:.2f} s wall incl. start-up), peak RSS {pull_rss / 1024:.0f} MiB"
    )
    # soci indexes gzip layers only (bench_soci.py measures it on one); zstd:chunked refuses this image:
    # its test layer repeats a path, which zstd:chunked must keep and cannot (bench_estargz.py measures it).
    for driver in [d for d in args.drivers.split(",") if d]:
        shutil.rmtree(work / "store", ignore_errors=True)
        result, seconds, rss = convert(config, image.ref, f"oci:{work / driver}:v1", driver)
        shutil.rmtree(work / driver, ignore_errors=True)
        print(
            f"{driver:12s} (layout → layout): {mb / seconds:7.1f} MB/s ({seconds:.2f} s incl. start-up), "
            f"peak RSS {rss / 1024:.0f} MiB, out {result['target_size']:,} B"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
