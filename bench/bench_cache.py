"""Layer cache benchmark (issue 7), with a real registry on loopback.

Images, built from real files of this machine (gzip -1 layers):

* A = base (~150 MB) + app A (~50 MB); B = the same base + app B (~50 MB); C = app B alone.

Timed, each as one in-process conversion (``Converter.convert``), end to end:

1. A cold (nothing cached);
2. A again to another tag: every layer is a cache hit (goal: under 2 s);
3. B after A: the base is a hit, app B is converted;
4. C with an empty cache: the cost of converting B's own new layer alone.
   Goal: time(3) <= 1.2 * time(4).

    .venv/bin/python bench/bench_cache.py [--driver nydus] [--base-mb 150] [--app-mb 50]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accel.converter import ConversionResult, Converter  # noqa: E402
from tests.support.configs import make_config  # noqa: E402
from tests.support.images import build_tree_image, pick_files, push_layout  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

WORK = ROOT / ".bench" / "cache"


def timed(
    config_dir: Path, host: str, source_cfg: object, driver: str, source: str, target: str
) -> tuple[ConversionResult, float]:
    config = make_config(config_dir, {host: source_cfg}, driver=driver, tag_suffix="-x")  # type: ignore[dict-item]
    with Converter(config) as converter:
        started = time.perf_counter()
        result = converter.convert(source, target=target)
        return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", default="nydus")
    parser.add_argument("--base-mb", type=int, default=150)
    parser.add_argument("--app-mb", type=int, default=50)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    usr = Path("/usr/lib")
    base = (usr, pick_files(usr, args.base_mb << 20))
    app_a = (Path("/usr/share"), pick_files(Path("/usr/share"), args.app_mb << 20))
    app_b = (Path("/usr/share"), pick_files(Path("/usr/share"), args.app_mb << 20, skip=args.app_mb << 20))
    print("building images from /usr/lib and /usr/share ...", flush=True)
    images = {
        "a": build_tree_image(WORK / "a", [base, app_a]),
        "b": build_tree_image(WORK / "b", [base, app_b]),
        "c": build_tree_image(WORK / "c", [app_b]),
    }
    registry = start_registry("plain", WORK / "registry")
    try:
        host = registry.host
        for name, image in images.items():
            push_layout(image.layout, f"{host}/bench/{name}:v1", tls_verify=False)
        size_a = sum(layer.uncompressed_size for layer in images["a"].images[0].layers)
        src = registry.source()
        cold, t_cold = timed(WORK / "w", host, src, args.driver, f"{host}/bench/a:v1", f"{host}/bench/a:out1")
        warm, t_warm = timed(WORK / "w", host, src, args.driver, f"{host}/bench/a:v1", f"{host}/bench/a:out2")
        shared, t_shared = timed(
            WORK / "w", host, src, args.driver, f"{host}/bench/b:v1", f"{host}/bench/b:out"
        )
        alone, t_alone = timed(
            WORK / "w2", host, src, args.driver, f"{host}/bench/c:v1", f"{host}/bench/c:out"
        )
    finally:
        registry.close()
    print(f"driver {args.driver}; image A: {size_a / 1e6:.0f} MB uncompressed in 2 layers")
    print(f"1. A cold:                 {t_cold:6.2f} s  (hits {cold.cache_hits}, misses {cold.cache_misses})")
    print(
        f"2. A again (all cached):   {t_warm:6.2f} s  (hits {warm.cache_hits}, misses {warm.cache_misses})"
        f"  goal < 2 s: {'met' if t_warm < 2 else 'NOT met'}"
    )
    print(
        f"3. B after A (base hit):   {t_shared:6.2f} s  (hits {shared.cache_hits}, "
        f"misses {shared.cache_misses})"
    )
    print(f"4. B's new layer alone:    {t_alone:6.2f} s")
    print("   stages of 4: " + ", ".join(f"{k} {v:.2f}" for k, v in alone.timings.items()))
    for name, result in (("1", cold), ("2", warm), ("3", shared)):
        stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
        print(f"   stages of {name}: {stages}")
    ratio = t_shared / t_alone
    print(f"   ratio 3/4 = {ratio:.2f}  goal ≤ 1.2: {'met' if ratio <= 1.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
