"""`make demo`: start a local registry, build a sample image, convert it with every driver, show the result.

Everything runs on loopback under ./demo-work (removed and recreated on each run); nothing is downloaded.
The sample image is the test suite's edge-case image (whiteouts, hardlinks, xattrs, devices, a 16 MiB
mostly-zero file) with Docker media types, built locally and pushed with skopeo.

The output is one table row per driver; the full accelctl summaries and the converted manifests go to
demo-work/details.txt. Each converted image is also copied out of the registry into an OCI layout under
demo-work/images/ (skopeo checks every blob's digest on the way: that is the "verified" column), so the
results can be looked at after the registry has stopped; the last lines say how.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accel.drivers import available_drivers  # noqa: E402
from accel.formats import soci  # noqa: E402
from accel.oci.layout import OCILayout  # noqa: E402
from accel.oci.manifest import Descriptor, Index, Manifest, parse_manifest  # noqa: E402
from accel.oci.reference import Reference  # noqa: E402
from accel.registry import RegistryClient  # noqa: E402
from tests.support.configs import write_config  # noqa: E402
from tests.support.images import build_rich_image, push_layout  # noqa: E402
from tests.support.registry import REGISTRY_BIN, start_registry  # noqa: E402

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
COLUMNS = ("driver", "target", "layers", "bytes", "seconds", "verified")


def convert(config: Path, source: str, details: TextIO) -> dict[str, Any]:
    args = [*ACCELCTL, "convert", "--config", str(config), "--output", "json", source]
    details.write(f"$ accelctl {' '.join(args[len(ACCELCTL) :])}\n")
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    details.write(proc.stderr + proc.stdout + "\n")
    if proc.returncode != 0:
        raise SystemExit(f"demo failed: accelctl exited with {proc.returncode}:\n{proc.stderr.strip()}")
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def copy_out(client: RegistryClient, target: str, layout: OCILayout, scratch: Path) -> int:
    """Copy the converted image into an OCI layout; every manifest and blob is checked against its
    digest on the way (by the client, then by the layout). Returns the number of blobs copied."""
    ref = Reference.parse(target)
    copied = 0

    def copy(reference: str) -> Descriptor:
        nonlocal copied
        fetched = client.get_manifest(ref.host, ref.repository, reference)
        document = parse_manifest(fetched.data, fetched.media_type)
        children = document.manifests if isinstance(document, Index) else [document.config, *document.layers]
        for child in children:
            if isinstance(document, Index):
                copy(child.digest)
                continue
            with (scratch / "blob").open("w+b") as sink:
                client.pull_blob(ref.host, ref.repository, child.digest, child.size, sink)
                sink.seek(0)
                layout.ingest(sink, child.digest, child.size)
            copied += 1
        layout.write_blob(fetched.data, fetched.digest)
        return Descriptor(fetched.media_type, fetched.digest, len(fetched.data))

    layout.tag(copy(ref.reference), ref.tag or "latest")
    return copied


def describe_layout(layout: OCILayout, tag: str, details: TextIO) -> int:
    """Write the layout's manifests to ``details``; returns the image layers the tag holds."""
    top = layout.read_document(layout.resolve(tag))
    documents: list[Manifest | Index] = [top]
    if isinstance(top, Index):
        documents += [layout.read_document(entry) for entry in top.manifests]
    layers = 0
    for document in documents:
        details.write(json.dumps(json.loads(document.to_bytes()), indent=2) + "\n")
        image = isinstance(document, Manifest) and document.artifact_type is None
        if image and document.config.media_type not in (soci.INDEX_V1, soci.INDEX_V2):  # a SOCI index
            layers += len(document.layers)
    return layers


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = ["   " + "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += [
        "-> " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Convert a sample image with every driver.")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (recreated)")
    work = parser.parse_args().work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print("starting a local registry (Debian's docker-registry) on loopback ...", flush=True)
    registry = start_registry("plain", work / "registry")
    rows: list[tuple[str, ...]] = []
    try:
        source = f"{registry.host}/demo/app:v1"
        # No path twice in a layer: containers/storage's zstd:chunked refuses that.
        image = build_rich_image(work / "image", media="docker", duplicate=False)
        sources = {registry.host: registry.source()}
        push_layout(image.layout, source, format=None, tls_verify=False)
        print(f"built a sample image and pushed it to {source}; converting it with every driver ...")

        layout = OCILayout(work / "images").init()
        client = RegistryClient(sources)
        with client, (work / "details.txt").open("w") as details:
            for driver in available_drivers():
                config = write_config(
                    work / f"{driver}.yaml",
                    work / "work",
                    sources,
                    driver=driver,
                    driver_config=DRIVER_OPTIONS.get(driver, {}),
                    tag_suffix=SUFFIXES[driver],
                )
                started = time.monotonic()
                summary = convert(config, source, details)
                seconds = time.monotonic() - started
                tag = summary["target"].rsplit(":", 1)[-1]
                blobs = copy_out(client, summary["target"], layout, work)
                layers = describe_layout(layout, tag, details)
                inspect = ["skopeo", "inspect", "--raw", f"oci:{layout.path}:{tag}"]
                readable = subprocess.run(inspect, capture_output=True, check=False).returncode == 0
                rows.append(
                    (
                        driver,
                        summary["target"],
                        str(layers),
                        str(summary["target_size"]),
                        f"{seconds:.1f}",
                        f"{blobs} blobs digest-checked"
                        + (", skopeo reads it" if readable else ", skopeo cannot read it"),
                    )
                )
    finally:
        registry.close()
    print(table(rows))
    print(
        f"\ndetails (accelctl summaries, manifests): {work / 'details.txt'}\n"
        f"converted images, one tag each, as an OCI layout: {work / 'images'}\n"
        f"  e.g. skopeo inspect oci:{work / 'images'}:v1-nydus\n"
        f"the registry has stopped; to look at it again (same data, same port {registry.port}, so the\n"
        f"configs {work}/<driver>.yaml work again):\n"
        f"  {REGISTRY_BIN} serve {registry.config_file}"
    )


if __name__ == "__main__":
    main()
