"""Several acceld nodes on one PostgreSQL: queue throughput, webhook latency in a burst, take-over time.

Usage: .venv/bin/python bench/bench_scale.py [--tasks 3000] [--nodes 3] [--events 1000] [--senders 10]
                                             [--lease 5]

Starts a PostgreSQL 15 cluster of its own (Debian's binaries, a temporary directory, fsync on) and uses
the scripted converter of the tests (tests/unit/tasks/fake_converter.py: no registry, no work), so the
figures are the task machinery's alone.

1. Claims: ``--tasks`` tasks queued, then ``--nodes`` processes each run a TaskEngine (4 workers) on the
   shared store until the queue is empty; prints tasks/s (each task: claim, start, twin lock, finish,
   unlock: every step a committed write). The same with one process on the embedded SQLite store.
2. Burst: ``--nodes`` real acceld processes on the database; ``--events`` webhooks (one new image each),
   sent round-robin over the nodes by ``--senders`` threads (10: Harbor's default ``max_job_workers``,
   the jobservice workers that deliver webhooks); prints p50/p99/max answer time. Twice: while the nodes
   run the new tasks as fast as the database lets them (scripted conversions of 0 s, the worst case for
   the answers, since every node's workers compete for the same two cores), and with conversions of 1 s.
3. Take-over: two acceld nodes, ``server.task_lease`` = ``--lease``; node A runs a long conversion and is
   SIGKILLed; prints the seconds until node B runs that task (goal: at most the lease plus 2 s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accel.database import PostgresDatabase
from accel.tasks import SQLiteTaskStore, Task, TaskEngine, TaskStatus, TaskStore
from accel.tasks.postgres import PostgresTaskStore
from tests.integration.test_acceld import Acceld, base_config, free_port, image, push_event
from tests.support.postgres import postgres_available, start_postgres
from tests.unit.tasks.fake_converter import FakeConverter


def _open(where: str) -> tuple[TaskStore, PostgresDatabase | None]:
    if where.startswith("postgresql://"):
        database = PostgresDatabase(where)
        return PostgresTaskStore(database), database
    return SQLiteTaskStore(where), None


def _drain(where: str, node: str, ready: Any, done: Any) -> None:
    """One node: an engine on the shared store, from the starting line until the parent says done."""
    store, database = _open(where)
    engine = TaskEngine(store, FakeConverter(), workers=4, node=node, lease=30)
    ready.wait()
    engine.start()
    done.wait()
    engine.shutdown(grace=5)
    if database is not None:
        database.close()


def claims_per_second(where: str, nodes: int, total: int) -> float:
    store, database = _open(where)
    for start in range(0, total, 500):
        batch = range(start, min(total, start + 500))
        store.add_many([Task(source=image(n), driver="fake", driver_key="fake/1") for n in batch])
    context = multiprocessing.get_context("spawn")
    ready, done = context.Barrier(nodes + 1), context.Event()
    workers = [context.Process(target=_drain, args=(where, f"node-{i}", ready, done)) for i in range(nodes)]
    for process in workers:
        process.start()
    ready.wait()  # every node imported and connected: the clock starts with all of them
    begin = time.perf_counter()
    while store.count(TaskStatus.COMPLETED) < total:
        time.sleep(0.005)
    elapsed = time.perf_counter() - begin
    done.set()
    for process in workers:
        process.join(30)
    ran = {t.node for t in store.list_tasks(limit=total)}
    if database is not None:
        database.close()
    print(f"  {nodes} node(s) on {'PostgreSQL' if database else 'SQLite'}: {total} tasks in {elapsed:.2f} s")
    print(f"    = {total / elapsed:,.0f} tasks/s (nodes that ran tasks: {len(ran)})")
    return total / elapsed


def _group(root: Path, count: int, dsn: str, lease: float, **env: str) -> list[Acceld]:
    group = []
    for index in range(count):
        node_root = root / f"node-{index}"
        node_root.mkdir(parents=True)
        config = base_config(node_root, task_lease=lease, node=f"node-{index}", port=free_port())
        config["provider"]["database"] = dsn
        config["converter"]["worker"] = 4
        daemon = Acceld(node_root, config, env)
        daemon.grace = 1.0
        group.append(daemon)
    return group


def burst(root: Path, dsn: str, nodes: int, events: int, senders: int, convert_seconds: float) -> None:
    group = [d.start() for d in _group(root, nodes, dsn, 30, FAKE_CONVERTER_DELAY=str(convert_seconds))]
    try:
        clients = [d.client() for d in group]
        for client in clients:  # connections open before the clock starts
            client.get("/api/v1/health")

        def send(n: int) -> float:
            begin = time.perf_counter()
            response = clients[n % nodes].post(
                "/api/v1/conversions",
                json=push_event(image(n)),
                headers={"Authorization": "hook-s3cret-value"},
            )
            assert response.status_code == 200, response.text
            return time.perf_counter() - begin

        with ThreadPoolExecutor(senders) as pool:
            began = time.perf_counter()
            latencies = sorted(pool.map(send, range(events)))
            sent = time.perf_counter() - began
        for client in clients:
            client.close()

        def at(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        print(
            f"  conversions of {convert_seconds:g} s: {events} webhooks from {senders} senders over {nodes} "
            f"nodes in {sent:.2f} s ({events / sent:,.0f}/s)"
        )
        print(f"    answer p50 {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        if convert_seconds == 0:
            group[0].wait_all_final(events, timeout=300)
    finally:
        for daemon in group:
            daemon.stop()


def takeover(root: Path, dsn: str, lease: float) -> float:
    a, b = _group(root, 2, dsn, lease, FAKE_CONVERTER_DELAY="120")
    try:
        a.start()
        task_id = a.webhook(push_event(image(0))).headers["x-accel-tasks"]
        while a.tasks()[0]["status"] != "PROCESSING":
            time.sleep(0.01)
        b.start()
        a.signal(signal.SIGKILL)
        killed = time.perf_counter()
        a.wait(10)
        while True:
            task = next(t for t in b.tasks() if t["id"] == task_id)
            if task["status"] == "PROCESSING" and task["node"] == "node-1":
                break
            time.sleep(0.01)
        took = time.perf_counter() - killed
        print(
            f"  SIGKILL of the running node to its task running elsewhere: {took:.2f} s (lease {lease:g} s)"
        )
        return took
    finally:
        a.stop()
        b.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--lease", type=float, default=5.0)
    args = parser.parse_args()
    if not postgres_available():
        print("PostgreSQL is not installed (apt-get install postgresql)")
        return 1
    server = start_postgres(fsync=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            root = Path(tmp)
            print("1. claims (scripted converter, 4 workers per node)")
            shared = claims_per_second(server.create_database(), args.nodes, args.tasks)
            single = claims_per_second(str(root / "tasks.db"), 1, args.tasks)
            print(f"  ratio PostgreSQL x{args.nodes} / SQLite x1: {shared / single:.2f}")
            print("2. webhook burst")
            for seconds in (0.0, 1.0):
                where = root / f"burst-{seconds:g}"
                burst(where, server.create_database(), args.nodes, args.events, args.senders, seconds)
            print("3. take-over after SIGKILL")
            takeover(root / "takeover", server.create_database(), args.lease)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
