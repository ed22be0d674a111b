"""`make bench`: every benchmark in turn, each in its own process (their figures are printed as they go).

Benchmarks are never part of the test suite; run them on a quiet machine (`uptime` should show a load
well under the number of cores), since every figure is wall-clock throughput.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = [
    "bench_registry.py",
    "bench_core.py",
    "bench_estargz.py",
    "bench_nydus.py",
    "bench_soci.py",
    "bench_nydus_zran.py",
    "bench_cache.py",
    "bench_acceld.py",
    "bench_scale.py",
    "bench_e2e.py",
]


def main() -> int:
    failed = []
    for name in ORDER:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(BENCH / name)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
