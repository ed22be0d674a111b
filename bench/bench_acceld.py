"""acceld end to end: webhook latency during a burst, and webhook-to-pushed time for a large image.

Usage: .venv/bin/python bench/bench_acceld.py [--events 100] [--images 10] [--concurrency 16]
                                              [--size-mb 200] [--driver oci] [--skip-e2e]
                                              [--burst-images 20] [--burst-mb 12] [--skip-many]

Starts a local docker-registry and a real ``acceld`` process (real converter, driver ``--driver``).

1. Burst: ``--events`` Harbor webhooks for ``--images`` pushed images (70 % duplicates of the tag event, 30 %
   child-manifest events), sent by ``--concurrency`` threads over one keep-alive client. Prints client-side
   and server-side (from acceld's request log) p50/p95/p99/max latency, and the time until every task ended.
2. End to end: a 3-layer image with about ``--size-mb`` MB of payload, one webhook, time until its task is
   COMPLETED, the per-stage times (pull, convert, push) and bytes in/out from /metrics, MB/s of the
   uncompressed input and acceld's peak RSS.
3. Many images: ``--burst-images`` distinct images of real files (``--burst-mb`` MB of tar each) converted
   one at a time, then (fresh registry and daemon) all arriving in one burst; prints webhook-to-last-
   COMPLETED of the burst over the sum of the one-at-a-time times (goal <= 0.6).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accel.tasks.model import parse_time
from tests.integration.test_acceld import Acceld, push_event
from tests.integration.test_acceld_registry import daemon_config
from tests.support.images import (
    MIB,
    build_rich_image,
    build_simple_image,
    build_tree_image,
    push_layout,
)
from tests.support.registry import registry_available, start_registry


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    worst = ordered[-1] * 1000
    return f"p50 {at(0.50):7.1f} ms  p95 {at(0.95):7.1f} ms  p99 {at(0.99):7.1f} ms  max {worst:7.1f} ms"


def wait_tasks(daemon: Acceld, count: int, timeout: float, interval: float = 0.02) -> list[dict[str, Any]]:
    """Polls the task list (one keep-alive client: a new client per poll costs the machine under test
    milliseconds of CPU each) until ``count`` tasks ended."""
    deadline = time.monotonic() + timeout
    tasks: list[dict[str, Any]] = []
    with daemon.client() as client:
        while time.monotonic() < deadline:
            tasks = daemon.tasks(client)
            if len(tasks) >= count and all(t["status"] in ("COMPLETED", "FAILED", "CANCELED") for t in tasks):
                return tasks
            time.sleep(interval)
    waiting = [
        (t["id"], t["source"], t["status"], t["reason"])
        for t in tasks
        if t["status"] in ("PENDING", "PROCESSING")
    ]
    raise SystemExit(f"tasks not finished after {timeout}s: {len(tasks)} tasks, unfinished {waiting}")


def finished_at(task: dict[str, Any]) -> float:
    """The task's end as a Unix time, from its record (the daemon's clock: this machine's)."""
    finished = parse_time(task["finished"])
    assert finished is not None, task
    return finished.timestamp()


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def burst(root: Path, args: argparse.Namespace) -> None:
    registry = start_registry("plain", root / "registry")
    try:
        pushed: dict[str, str] = {}
        for n in range(args.images):
            layout = root / f"small-{n}"
            build_simple_image(layout, {f"f{n}": f"image {n}\n".encode() * 1000}, tag="v1")
            ref = f"{registry.host}/bench/app{n}:v1"
            pushed[ref] = push_layout(layout, ref, tag="v1", tls_verify=False, format=None)
        config = daemon_config(root / "burst", registry)
        config["converter"]["driver"]["type"] = args.driver
        daemon = Acceld(root, config, fake=False)
        daemon.start()
        try:
            events: list[dict[str, Any]] = []
            refs = list(pushed.items())
            for i in range(args.events):
                ref, digest = refs[i % len(refs)]
                if (i // len(refs)) % 10 < 7:
                    events.append(push_event(ref, digest=digest))
                else:
                    child = "sha256:" + f"{i:04d}".ljust(64, "c")
                    events.append(push_event(f"{ref.rsplit(':', 1)[0]}@{child}", tag=child, digest=child))
            random.Random(1).shuffle(events)
            with daemon.client() as client:

                def send(payload: dict[str, Any]) -> float:
                    begin = time.perf_counter()
                    daemon.webhook(payload, client=client).raise_for_status()
                    return time.perf_counter() - begin

                begin = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    latencies = list(pool.map(send, events))
                sent = time.perf_counter() - begin
            tasks = wait_tasks(daemon, args.images, 120)
            done = time.perf_counter() - begin
            server = [
                float(m) / 1000
                for m in re.findall(
                    r"msg=request method=POST path=/api/v1/conversions status=200 duration_ms=([0-9.]+)",
                    daemon.log_text(),
                )
            ]
        finally:
            daemon.stop()
        states = sorted({t["status"] for t in tasks})
        print(f"burst: {len(events)} webhooks, {args.images} images, {args.concurrency} client threads")
        print(f"  client-side latency: {percentiles(latencies)}")
        print(f"  server-side latency: {percentiles(server)}")
        print(
            f"  all sent in {sent:.2f} s; all {len(tasks)} tasks final after {done:.2f} s (states {states})"
        )
    finally:
        registry.close()


def end_to_end(root: Path, args: argparse.Namespace) -> None:
    registry = start_registry("plain", root / "registry-e2e")
    try:
        layout = root / "big"
        image = build_rich_image(layout, tag="v1", payload_size=args.size_mb * 1_000_000, big_zero_size=MIB)
        uncompressed = sum(layer.uncompressed_size for layer in image.images[0].layers)
        compressed = sum(layer.size for layer in image.images[0].layers)
        ref = f"{registry.host}/bench/big:v1"
        digest = push_layout(layout, ref, tag="v1", tls_verify=False, format=None)
        config = daemon_config(root / "e2e", registry)
        config["converter"]["driver"]["type"] = args.driver
        (root / "e2e").mkdir(exist_ok=True)
        daemon = Acceld(root / "e2e", config, fake=False)
        daemon.start()
        try:
            begin = time.perf_counter()
            response = daemon.webhook(push_event(ref, digest=digest))
            answered = time.perf_counter() - begin
            # Webhooks while the conversion runs in the same process (worker threads share the GIL).
            while daemon.tasks()[-1]["status"] == "PENDING":
                time.sleep(0.01)
            busy: list[float] = []
            with daemon.client() as client:
                for _ in range(50):
                    if daemon.tasks(client)[-1]["status"] != "PROCESSING":
                        break
                    sent_at = time.perf_counter()
                    daemon.webhook(push_event(ref, digest=digest), client=client).raise_for_status()
                    busy.append(time.perf_counter() - sent_at)
            tasks = wait_tasks(daemon, 1, 1800)
            total = time.perf_counter() - begin
            # A duplicate sent while the first task was still resolving the tag gets its own task, which
            # then finds the target already converted; report the task that did the work.
            task = next((t for t in tasks if not t["reason"]), tasks[-1])
            with daemon.client() as client:
                text = client.get("/metrics").text
            assert daemon.proc is not None
            rss = peak_rss_mb(daemon.proc.pid)
        finally:
            daemon.stop()
        stage = "acceleration_service_core_conversion_stage_duration_seconds_sum"
        print(f"end to end ({args.driver}): image {compressed / 1e6:.1f} MB compressed in 3 layers")
        if uncompressed:
            print(
                f"  uncompressed input {uncompressed / 1e6:.1f} MB -> {uncompressed / 1e6 / total:.1f} MB/s"
            )
        print(f"  webhook answered in {answered * 1000:.1f} ms (HTTP {response.status_code})")
        print(f"  webhook -> {task['status']} in {total:.2f} s (reason {task['reason']!r})")
        if busy:
            print(f"  {len(busy)} webhooks during the conversion: {percentiles(busy)}")
        for name in ("pull", "convert", "push"):
            labels = '{stage="' + name + '"}'
            print(f"  stage {name:8s} {metric(text, stage, labels):8.3f} s")
        bytes_in = metric(text, "acceleration_service_core_bytes_in_total")
        bytes_out = metric(text, "acceleration_service_core_bytes_out_total")
        print(f"  bytes in {bytes_in / 1e6:.1f} MB, out {bytes_out / 1e6:.1f} MB")
        print(f"  source size {task['source_size']} B, target size {task['target_size']} B")
        print(f"  acceld peak RSS {rss:.0f} MB")
    finally:
        registry.close()


def _distinct_images(root: Path, count: int, size_mb: int) -> list[Path]:
    """``count`` one-layer images of real files (consecutive runs of this machine's files under 2 MB from
    /usr/lib and /usr/share, gzip -6), disjoint so that no layer of one is a cache hit for another."""
    files: list[str] = []
    for top in ("/usr/lib/x86_64-linux-gnu", "/usr/share"):
        for dirpath, dirnames, filenames in sorted(os.walk(top)):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if not path.is_symlink() and path.is_file() and path.stat().st_size < 2 << 20:
                    files.append(str(path).lstrip("/"))
    layouts, start = [], 0
    for n in range(count):
        picked, total = [], 0
        while total < size_mb << 20 and start < len(files):
            picked.append(files[start])
            total += (Path("/") / files[start]).stat().st_size
            start += 1
        layout = root / f"distinct-{n}"
        build_tree_image(layout, [(Path("/"), picked)], tag="v1", level=6)
        layouts.append(layout)
    return layouts


def many_images(root: Path, args: argparse.Namespace) -> None:
    """20 distinct images in one burst against the same 20 converted one at a time, each on a fresh
    registry and daemon: webhook to last COMPLETED over the sum of webhook-to-COMPLETED times alone."""
    layouts = _distinct_images(root / "distinct", args.burst_images, args.burst_mb)

    def cpu_seconds(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def machine_busy() -> tuple[float, float]:
        """Seconds of CPU the whole machine spent busy and idle so far (every core, from /proc/stat)."""
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")

    def run(phase: str, together: bool) -> tuple[float, list[float], float]:
        registry = start_registry("plain", root / f"registry-{phase}")
        try:
            events = []
            for n, layout in enumerate(layouts):
                ref = f"{registry.host}/many/app{n}:v1"
                events.append(push_event(ref, digest=push_layout(layout, ref, tag="v1", tls_verify=False)))
            config = daemon_config(root / f"many-{phase}", registry)
            config["converter"]["driver"]["type"] = args.burst_driver
            config["converter"]["worker"] = args.burst_workers
            daemon = Acceld(root / f"many-{phase}", config, fake=False)
            (root / f"many-{phase}").mkdir(exist_ok=True)
            daemon.start()
            assert daemon.proc is not None
            try:
                cpu = cpu_seconds(daemon.proc.pid)
                registry_pid = registry.pid
                assert registry_pid is not None
                registry_cpu, (busy, idle) = cpu_seconds(registry_pid), machine_busy()

                def print_load(label: str) -> None:
                    busy_now, idle_now = machine_busy()
                    print(
                        f"  {label}: registry CPU {cpu_seconds(registry_pid) - registry_cpu:.1f} s; machine "
                        f"{busy_now - busy:.1f} s busy, {idle_now - idle:.1f} s idle"
                    )

                # Times come from the task records (webhook sent to the record's ``finished``), so how
                # often this process polls changes neither the figure nor, at 0.1 s, the machine's load.
                if together:
                    begin = time.time()
                    with daemon.client() as client:
                        for event in events:
                            response = daemon.webhook(event, client=client)
                            assert response.status_code == 200, response.text
                    tasks = wait_tasks(daemon, len(events), 600, interval=0.1)
                    elapsed = max(finished_at(t) for t in tasks) - begin
                    print_load("burst")
                    return elapsed, [], cpu_seconds(daemon.proc.pid) - cpu
                alone = []
                for n, event in enumerate(events):
                    begin = time.time()
                    assert daemon.webhook(event).status_code == 200
                    tasks = wait_tasks(daemon, n + 1, 600, interval=0.1)
                    alone.append(max(finished_at(t) for t in tasks) - begin)
                print_load("one at a time")
                return sum(alone), alone, cpu_seconds(daemon.proc.pid) - cpu
            finally:
                daemon.stop()
        finally:
            registry.close()

    alone_sum, alone, alone_cpu = run("alone", together=False)
    together, _, together_cpu = run("burst", together=True)
    print(
        f"{args.burst_images} distinct images of ~{args.burst_mb} MB of tar ({args.burst_driver}), "
        f"converter.worker {args.burst_workers}:"
    )
    print(
        f"  one at a time: {alone_sum:.2f} s in all (each {min(alone):.2f}-{max(alone):.2f} s); "
        f"acceld CPU {alone_cpu:.1f} s = {alone_cpu / alone_sum:.2f} cores busy"
    )
    print(
        f"  in one burst:  {together:.2f} s webhook to last COMPLETED = {together / alone_sum:.2f} "
        f"of the sum; acceld CPU {together_cpu:.1f} s = {together_cpu / together:.2f} cores busy"
    )
    print("  (goal <= 0.6: both cores busy)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--driver", default="oci")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument(
        "--burst-images", type=int, default=20, help="distinct images for the many-images run"
    )
    parser.add_argument("--burst-mb", type=int, default=12, help="tar MB of each of them")
    parser.add_argument("--burst-driver", default="estargz")
    parser.add_argument("--burst-workers", type=int, default=2, help="converter.worker of that daemon")
    parser.add_argument("--skip-many", action="store_true")
    args = parser.parse_args()
    if not registry_available():
        print("docker-registry is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-acceld-") as tmp:
        root = Path(tmp)
        burst(root, args)
        if not args.skip_e2e:
            end_to_end(root, args)
        if not args.skip_many:
            many_images(root, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
