"""eStargz end to end, against the references, in one run: what a user waits for.

Usage: .venv/bin/python bench/bench_e2e.py [--size-mb 230] [--repeat 2] [--skip-ctr-remote]
       [--skip-references]

Builds once (cached in ``.bench/e2e``) a real 3-layer image from this machine's files (Python's stdlib,
shared libraries, ``/usr/share``; GNU tar, ``gzip -6``), pushes it to a local docker-registry, then times:

* **ours, whole process**: ``accelctl convert --driver estargz`` in a process of its own, registry to
  registry (start-up, pull, convert, push; a fresh work_dir each run, so nothing is cached);
* **ours, in process**: ``Converter.convert`` of the same image from an OCI layout to an OCI layout in this
  process (no network, imports done): the conversion alone, the bound for the whole process;
* **Go ``estargz.Build``** (Debian's stargz-snapshotter library, through tests/interop/estargz/go, library
  defaults: gzip 9) of the same three layers, conversion only, one process per layer, summed;
* **``ctr-remote image convert --estargz --oci`` + ``ctr-remote image push``** (Debian's
  ``stargz-snapshotter``) through a private containerd holding the pulled source; where installed.

Prints each time, the start-up share of the whole process, the output bytes, and the ratios the issue
tracks: reference time / ours (goals >= 8x against ``estargz.Build``, >= 10x against ``ctr-remote``, output
no larger) and whole process / in process (goal <= 1.15).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accel.config import SourceConfig  # noqa: E402
from accel.converter import Converter  # noqa: E402
from accel.oci.layout import OCILayout  # noqa: E402
from accel.oci.manifest import Manifest  # noqa: E402
from tests.interop.estargz.conftest import build_esgzref  # noqa: E402
from tests.support.configs import config_dict, make_config  # noqa: E402
from tests.support.containerd import containerd_available, start_containerd  # noqa: E402
from tests.support.images import build_tree_image, pick_files, push_layout  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

CACHE = ROOT / ".bench" / "e2e"
ACCELCTL = Path(sys.executable).parent / "accelctl"
CTR_REMOTE = shutil.which("ctr-remote")


def _prefixed(root: Path, size: int) -> list[str]:
    base = str(root).lstrip("/")
    return [f"{base}/{name}" if name != "." else base for name in pick_files(root, size)]


def build_image(size_mb: int) -> tuple[Path, int]:
    """The source image as an OCI layout (cached); answers its path and its tar bytes."""
    layout = CACHE / f"image-{size_mb}"
    if not (layout / "index.json").exists():
        shutil.rmtree(layout, ignore_errors=True)
        share = size_mb << 20
        trees = [
            (Path("/"), _prefixed(Path("/usr/lib/python3.11"), share // 4)),
            (Path("/"), _prefixed(Path("/usr/lib/x86_64-linux-gnu"), share * 2 // 5)),
            (Path("/"), _prefixed(Path("/usr/share"), share - share // 4 - share * 2 // 5)),
        ]
        build_tree_image(layout, trees, tag="v1", level=6)
    return layout, sum(_tar_size(blob) for blob in _layers(layout))


def _layers(layout: Path) -> list[Path]:
    oci = OCILayout(layout)
    manifest = oci.read_document(oci.resolve("v1"))
    assert isinstance(manifest, Manifest)
    return [oci.blob_path(layer.digest) for layer in manifest.layers]


def _tar_size(blob: Path) -> int:
    total = 0
    with gzip.open(blob) as stream:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
    return total


def row(what: str, seconds: float, tar_mb: float, note: str = "") -> None:
    print(f"{what:44s} {seconds:7.2f} s  {tar_mb / seconds:6.1f} MB/s  {note}", flush=True)


def ours_whole_process(
    registry_host: str, source: str, work: Path, sources: dict[str, SourceConfig]
) -> tuple[float, int, dict[str, float]]:
    config_file = work.with_suffix(".yaml")
    config_file.write_text(json.dumps(config_dict(work, sources, driver="estargz", tag_suffix="-esgz")))
    argv = [str(ACCELCTL), "convert", "--config", str(config_file), "--output", "json"]
    begin = time.perf_counter()
    run = subprocess.run([*argv, f"{registry_host}/{source}"], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - begin
    if run.returncode != 0:
        raise SystemExit(f"accelctl convert failed: {run.stderr[-2000:]}")
    result = json.loads(run.stdout)
    return elapsed, int(result["target_size"]), dict(result["timings"])


_IMPORTS = "import accel.cli.accelctl, accel.converter, accel.drivers.estargz, accel.formats.estargz"
# The HTTP stack is imported on the first registry request (a conversion between layouts never loads it).
_REGISTRY_IMPORTS = f"{_IMPORTS}, httpx, httpcore"
# As the accelctl command runs them: after skipping the imports it never uses, and ending as it ends.
_COMMAND = (
    "from accel.cli.process import end_process, skip_unused_imports\n"
    "skip_unused_imports()\n{}\nend_process(0)"
)


def startup_seconds(imports: str = _REGISTRY_IMPORTS) -> float:
    """Interpreter start, the imports ``accelctl convert --driver estargz`` of a registry image needs, and
    the interpreter's exit: best of three."""
    best = float("inf")
    for _ in range(3):
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", _COMMAND.format(imports)], check=True)
        best = min(best, time.perf_counter() - begin)
    return best


def ours_in_process(layout: Path, work: Path) -> tuple[float, float]:
    config = make_config(work / "work", {}, driver="estargz", tag_suffix="-esgz")
    with Converter(config) as converter:
        begin = time.perf_counter()
        result = converter.convert(f"oci:{layout}:v1", target=f"oci:{work / 'out'}:v1-esgz")
        elapsed = time.perf_counter() - begin
    return elapsed, float(result.timings.get("convert", 0.0))


def go_build(layers: list[Path], work: Path) -> tuple[float, int] | str:
    helper = build_esgzref(work / "go")
    if isinstance(helper, str):
        return helper
    seconds, size = 0.0, 0
    for n, layer in enumerate(layers):
        out = work / f"go-{n}"
        run = subprocess.run([str(helper), "convert", str(layer), str(out)], capture_output=True, text=True)
        if run.returncode != 0:
            return f"esgzref failed: {run.stderr[-500:]}"
        result = json.loads(run.stdout)
        seconds += float(result["seconds"])
        size += int(result["compressed_size"])
        out.unlink()
    return seconds, size


def ctr_remote(registry_host: str, source: str, work: Path) -> tuple[float, float] | str:
    if CTR_REMOTE is None or not containerd_available():
        return "ctr-remote or containerd not installed (apt-get install stargz-snapshotter containerd)"
    daemon = start_containerd(work / "containerd")
    try:

        def ctr(*args: str) -> float:
            assert CTR_REMOTE is not None
            begin = time.perf_counter()
            argv = [CTR_REMOTE, "-a", str(daemon.socket), "-n", "bench", *args]
            subprocess.run(argv, check=True, capture_output=True, timeout=1800)
            return time.perf_counter() - begin

        src, dst = f"{registry_host}/{source}", f"{registry_host}/{source}-ctr-esgz"
        ctr("images", "pull", "--plain-http", src)
        convert = ctr("images", "convert", "--estargz", "--oci", src, dst)
        push = ctr("images", "push", "--plain-http", dst)
        return convert, push
    finally:
        daemon.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=230, help="tar bytes of the image, about")
    parser.add_argument("--repeat", type=int, default=2, help="runs of ours (the fastest is kept)")
    parser.add_argument("--skip-ctr-remote", action="store_true")
    parser.add_argument(
        "--skip-references", action="store_true", help="ours only: no estargz.Build, no ctr-remote"
    )
    args = parser.parse_args()
    layout, tar_bytes = build_image(args.size_mb)
    layers = _layers(layout)
    gz_bytes = sum(p.stat().st_size for p in layers)
    print(
        f"image: {len(layers)} layers, {tar_bytes / 1e6:.1f} MB of tar, {gz_bytes / 1e6:.1f} MB gzip; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    mbs = tar_bytes / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        registry = start_registry("plain", work / "registry")
        try:
            sources = {registry.host: registry.source()}
            whole: list[tuple[float, int, dict[str, float]]] = []
            inside: list[tuple[float, float]] = []
            for n in range(max(1, args.repeat)):
                source = f"e2e/app{n}:v1"
                push_layout(layout, f"{registry.host}/{source}", tag="v1", tls_verify=False)
                whole.append(ours_whole_process(registry.host, source, work / f"ours-{n}", sources))
                inside.append(ours_in_process(layout, work / f"inproc-{n}"))
                shutil.rmtree(work / f"inproc-{n}")
            process_s, our_size, stages = min(whole, key=lambda run: run[0])
            inproc_s, inproc_convert = min(inside)
            row("ours, whole accelctl process", process_s, mbs, f"out {our_size:,d} B")
            print("  its stages (wall s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
            row("ours, in process (layout to layout)", inproc_s, mbs, f"convert stage {inproc_convert:.2f} s")
            print(f"  whole process / in process: {process_s / inproc_s:.2f} (goal <= 1.15)")
            startup = startup_seconds()
            print(
                f"  of the whole process, start-up (interpreter, imports, exit) is {startup:.2f} s = "
                f"{startup / process_s * 100:.0f} % (between OCI layouts, without the HTTP stack: "
                f"{startup_seconds(_IMPORTS):.2f} s); the network adds {process_s - startup - inproc_s:.2f} s"
            )
            go = "skipped (--skip-references)" if args.skip_references else go_build(layers, work)
            if isinstance(go, str):
                print(f"Go estargz.Build unavailable: {go}")
            else:
                go_s, go_size = go
                row("Go estargz.Build (gzip 9) of the 3 layers", go_s, mbs, f"out {go_size:,d} B")
                print(
                    f"  ours whole process vs estargz.Build: {go_s / process_s:.1f}x faster (goal >= 8x), "
                    f"output {our_size / go_size:.3f} of its size"
                )
            if not (args.skip_ctr_remote or args.skip_references):
                remote = ctr_remote(registry.host, "e2e/app0:v1", work)
                if isinstance(remote, str):
                    print(f"ctr-remote unavailable: {remote}")
                else:
                    convert_s, push_s = remote
                    total = convert_s + push_s
                    note = f"convert {convert_s:.2f} s, push {push_s:.2f} s"
                    row("ctr-remote convert --estargz --oci + push", total, mbs, note)
                    print(
                        f"  ours whole process vs ctr-remote: {total / process_s:.1f}x faster (goal >= 10x)"
                    )
        finally:
            registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
