"""`make demo`: start a local registry, build a sample image, convert it with every driver, show the result.

Everything runs on loopback under ./demo-work (removed and recreated on each run); nothing is downloaded.
The sample image is the test suite's edge-case image (whiteouts, hardlinks, xattrs, devices, a 16 MiB
mostly-zero file) with Docker media types, built locally and pushed with skopeo.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accel.drivers import available_drivers  # noqa: E402
from tests.support.configs import write_config  # noqa: E402
from tests.support.images import build_rich_image, push_layout  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

WORK = ROOT / "demo-work"
ACCELCTL = [sys.executable, "-m", "accel.cli.accelctl"]
# The sample's layers are small: let SOCI index them all (its default skips layers under 10 MiB).
DRIVER_OPTIONS = {"soci": {"min_layer_size": "0"}}
SUFFIXES = {
    "oci": "-oci",
    "estargz": "-esgz",
    "zstdchunked": "-zstdchunked",
    "nydus": "-nydus",
    "soci": "-soci",
}


def run(args: list[str]) -> str:
    print("$ accelctl " + " ".join(args[len(ACCELCTL) :]), flush=True)
    proc = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=False)
    print(proc.stdout, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed: accelctl exited with {proc.returncode}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description="Convert a sample image with every driver.")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (recreated)")
    work = parser.parse_args().work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print("starting a local registry (Debian's docker-registry) on loopback ...", flush=True)
    registry = start_registry("plain", work / "registry")
    try:
        source = f"{registry.host}/demo/app:v1"
        print(f"building a sample image into oci:{work / 'image'} ...", flush=True)
        # No path twice in a layer: containers/storage's zstd:chunked refuses that.
        image = build_rich_image(work / "image", media="docker", duplicate=False)
        sources = {registry.host: registry.source()}

        print(f"pushing it to {source} with skopeo ...", flush=True)
        push_layout(image.layout, source, format=None, tls_verify=False)

        for driver in available_drivers():
            config = write_config(
                work / f"{driver}.yaml",
                work / "work",
                sources,
                driver=driver,
                driver_config=DRIVER_OPTIONS.get(driver, {}),
                tag_suffix=SUFFIXES[driver],
            )
            print(f"\nconverting {source} with the `{driver}` driver", flush=True)
            summary = json.loads(
                run([*ACCELCTL, "convert", "--config", str(config), "--output", "json", source])
            )
            seconds = summary["timings"]["total"]
            print(f"-> {summary['target']}: {summary['target_size']} bytes, {seconds} s")
            manifest = subprocess.run(
                ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{summary['target']}"],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            ).stdout
            print(json.dumps(json.loads(manifest), indent=2))
        print(f"\nthe registry holds: {source} and its converted tags; config files are in {work}")
    finally:
        registry.close()


if __name__ == "__main__":
    main()
