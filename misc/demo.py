"""`make demo`: start a local registry, build a sample image, convert it with every driver, show the result.

Everything runs on loopback under ./demo-work (removed and recreated on each run); nothing is downloaded.
The sample image is the test suite's edge-case image (whiteouts, hardlinks, xattrs, devices, a 16 MiB
mostly-zero file) with Docker media types, built locally and pushed with skopeo.
"""

from __future__ import annotations

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
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    print("starting a local registry (Debian's docker-registry) on loopback ...", flush=True)
    registry = start_registry("plain", WORK / "registry")
    try:
        source = f"{registry.host}/demo/app:v1"
        print(f"building a sample image into oci:{WORK / 'image'} ...", flush=True)
        image = build_rich_image(WORK / "image", media="docker")
        sources = {registry.host: registry.source()}

        print(f"pushing it to {source} with skopeo ...", flush=True)
        push_layout(image.layout, source, format=None, tls_verify=False)

        for driver in available_drivers():
            config = write_config(
                WORK / f"{driver}.yaml", WORK / "work", sources, driver=driver, tag_suffix=SUFFIXES[driver]
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
        print(f"\nthe registry holds: {source} and its converted tags; config files are in {WORK}")
    finally:
        registry.close()


if __name__ == "__main__":
    main()
