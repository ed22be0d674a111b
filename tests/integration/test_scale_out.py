"""Several acceld processes on one real PostgreSQL: one queue, one layer cache, the loss of a node survived.

Every node has a work_dir of its own (nothing shared but the database and the registry), as on separate
machines. The scripted converter (tests.unit.tasks.fake_converter) records each conversion it runs in its
node's work_dir, so "ran once" is checked across all nodes.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.test_acceld import (
    ACCELD,
    TOKEN,
    Acceld,
    base_config,
    free_port,
    image,
    push_event,
    until,
)
from tests.integration.test_acceld_registry import ACCEPT, assert_target_complete, daemon_config, push_images
from tests.integration.test_layer_cache import _images
from tests.support.faultproxy import FaultProxy
from tests.support.images import skopeo_available
from tests.support.postgres import PostgresServer
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration

Nodes = Callable[..., list[Acceld]]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """``nodes(n, dsn, config=..., **env)``: n acceld (not started) named node-0 … on database ``dsn``."""
    made: list[Acceld] = []

    def make(count: int, dsn: str, config: dict[str, Any] | None = None, **env: str) -> list[Acceld]:
        group = []
        for index in range(count):
            root = tmp_path / f"node-{index}"
            root.mkdir()
            node_config = config or base_config(root)
            node_config = {
                **node_config,
                "server": {**node_config["server"], "port": free_port(), "node": f"node-{index}"},
                "provider": {**node_config["provider"], "work_dir": str(root / "work"), "database": dsn},
            }
            daemon = Acceld(root, node_config, env, fake=config is None)
            daemon.grace = 1.0  # stopping a node mid-conversion is part of these tests, not a wait
            group.append(daemon)
        made.extend(group)
        return group

    yield make
    for daemon in made:
        daemon.stop()


def all_conversions(group: list[Acceld]) -> Counter[str]:
    return Counter(source for daemon in group for source in daemon.conversions)


def health(daemon: Acceld) -> int:
    with daemon.client(timeout=5) as client:
        return client.get("/api/v1/health").status_code


def start_one_conversion(daemon: Acceld) -> str:
    """Start ``daemon``, queue one image there and wait until it converts it; answers the task id."""
    daemon.start()
    task_id = str(daemon.webhook(push_event(image(0))).headers["x-accel-tasks"])
    until(lambda: daemon.tasks()[0]["status"] == "PROCESSING", 10, f"the conversion on {daemon.addr}")
    return task_id


def test_two_nodes_racing_on_200_tasks_run_each_once(nodes: Nodes, postgres_dsn: str) -> None:
    group = [d.start() for d in nodes(2, postgres_dsn)]
    sources = [image(n) for n in range(200)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: group[n % 2].webhook(push_event(sources[n])), range(200)))
    assert all(a.status_code == 200 for a in answers)
    tasks = group[0].wait_all_final(200, timeout=120)
    assert len(tasks) == 200 and all(t["status"] == "COMPLETED" for t in tasks)
    ran = all_conversions(group)
    assert set(ran) == set(sources) and set(ran.values()) == {1}, "no task lost, none run twice"
    assert {t["node"] for t in tasks} == {"node-0", "node-1"}, "both nodes took work from the one queue"


def test_a_restarted_node_does_not_take_the_live_task(nodes: Nodes, postgres_dsn: str) -> None:
    a, b = nodes(2, postgres_dsn, FAKE_CONVERTER_DELAY="4")
    task_id = start_one_conversion(a)
    b.start()
    b.stop()
    b.start()  # a restart runs the start-up reclaim: it must leave node-0's leased task alone
    [task] = b.wait_all_final(1, timeout=30)
    assert task["id"] == task_id and task["status"] == "COMPLETED" and task["node"] == "node-0"
    assert a.conversions == [image(0)] and b.conversions == []


def test_cancel_and_retry_from_any_node(nodes: Nodes, postgres_dsn: str) -> None:
    a, b = nodes(2, postgres_dsn, FAKE_CONVERTER_DELAY="60")
    task_id = start_one_conversion(a)
    b.start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with b.client() as client:
        shown = client.get(f"/api/v1/conversions/{task_id}", headers=auth)
        assert shown.status_code == 200 and shown.json()["node"] == "node-0"
        assert client.post(f"/api/v1/conversions/{task_id}/cancel", headers=auth).status_code == 200
    # node-0 reads the request at its next heartbeat (a third of the 2 s lease).
    until(lambda: b.tasks()[0]["status"] == "CANCELED", 10, "the cancel to reach node-0")
    assert a.conversions == []
    a.stop()
    with b.client() as client:
        retried = client.post(f"/api/v1/conversions/{task_id}/retry", headers=auth)
    assert retried.status_code == 200, retried.text
    # node-1 asked for the cancel; now it runs the retried task, and must not cancel it again.
    running = until(lambda: b.tasks()[0]["status"] == "PROCESSING" and b.tasks()[0], 10, "the retried task")
    assert running["node"] == "node-1"


def test_metrics_show_the_shared_queue_on_every_node(nodes: Nodes, postgres_dsn: str) -> None:
    a, b = nodes(2, postgres_dsn, FAKE_CONVERTER_DELAY="60")
    for daemon in (a, b):
        daemon.config["converter"] = {**daemon.config["converter"], "worker": 1}
    a.start()
    for n in range(5):
        assert a.webhook(push_event(image(n))).status_code == 200
    b.start()
    until(lambda: sum(t["status"] == "PROCESSING" for t in b.tasks()) == 2, 10, "one conversion per node")

    def gauges(daemon: Acceld) -> tuple[str, str]:
        with daemon.client() as client:
            lines = client.get("/metrics").text.splitlines()
        depth = next(line for line in lines if line.startswith("acceleration_service_core_queue_depth"))
        running = next(line for line in lines if line.startswith("acceleration_service_core_tasks_running"))
        return depth.split()[-1], running.split()[-1]

    assert gauges(a) == gauges(b) == ("3.0", "1.0"), "depth is the shared queue's; running is the node's"


def test_database_down_for_10_s_loses_nothing(nodes: Nodes, restartable_postgres: PostgresServer) -> None:
    [daemon] = nodes(1, restartable_postgres.create_database(), FAKE_CONVERTER_DELAY="3")
    daemon.start()
    for n in range(4):
        assert daemon.webhook(push_event(image(n))).status_code == 200
    until(lambda: sum(t["status"] == "PROCESSING" for t in daemon.tasks()) == 2, 10, "two conversions")
    restartable_postgres.stop()
    until(lambda: health(daemon) == 500, 10, "health to report the lost database")
    refused = daemon.webhook(push_event(image(9)))
    assert refused.status_code == 503 and set(refused.json()) == {"code", "message"}, refused.text
    assert restartable_postgres.password not in refused.text
    time.sleep(10)  # the outage itself: the running conversions finish while the database is away
    restartable_postgres.start()
    until(lambda: health(daemon) == 200, 30, "health to recover")
    tasks = daemon.wait_all_final(4, timeout=60)
    assert sorted(t["source"] for t in tasks) == [image(n) for n in range(4)]
    assert all(t["status"] == "COMPLETED" for t in tasks), [(t["source"], t["reason"]) for t in tasks]
    assert Counter(daemon.conversions) == Counter(image(n) for n in range(4)), "each ran exactly once"
    assert restartable_postgres.password not in daemon.log_text()


def test_a_database_down_at_start_is_one_clear_line(tmp_path: Path, postgres_server: PostgresServer) -> None:
    dsn = f"postgresql://accel:{postgres_server.password}@127.0.0.1:{free_port()}/nowhere"
    config = base_config(tmp_path)
    config["provider"]["database"] = dsn
    daemon = Acceld(tmp_path, config)
    daemon.config_file.write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [str(ACCELD), "--config", str(daemon.config_file)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert "cannot reach the database postgresql://accel:***@127.0.0.1" in run.stderr + run.stdout
    assert postgres_server.password not in run.stderr + run.stdout


# ------------------------------------------------------------------------ the real converter


@pytest.fixture
def _skopeo() -> None:
    if not skopeo_available():
        pytest.skip("skopeo is not installed")


@pytest.mark.usefixtures("_skopeo")
def test_three_nodes_survive_the_loss_of_one_mid_conversion(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path, nodes: Nodes, postgres_dsn: str
) -> None:
    names = [f"scale{random.randrange(1 << 30)}/app{n}" for n in range(8)]
    direct = push_images(registry_plain, tmp_path, names, media="docker")
    pushed = {f"{fault_proxy.host}/{ref.split('/', 1)[1]}": digest for ref, digest in direct.items()}
    config = daemon_config(tmp_path, registry_plain, host=fault_proxy.host)
    config["converter"]["driver"] = {"type": "estargz"}
    config["converter"]["rules"] = [{"tag_suffix": "-esgz"}]
    first, *others = nodes(3, postgres_dsn, config=config)
    # node-0's first layer download stalls halfway: it is killed in the middle of that conversion.
    stall = fault_proxy.hold("GET", r"/blobs/sha256:", after=64, times=1)
    try:
        first.start()
        for ref, digest in pushed.items():
            assert first.webhook(push_event(ref, digest=digest)).status_code == 200
        assert stall.reached.wait(30), "node-0 started converting"
        for daemon in others:
            daemon.start()
        first.signal(signal.SIGKILL)
        first.wait(10)
        killed = time.monotonic()
        tasks = others[0].wait_all_final(8, timeout=120)
        took = time.monotonic() - killed
    finally:
        stall.release.set()
    assert all(t["status"] == "COMPLETED" for t in tasks), [(t["source"], t["reason"]) for t in tasks]
    assert {t["source"] for t in tasks} == set(pushed)
    assert took < 2 + 60, f"every task done {took:.1f} s after the kill (lease 2 s)"
    puts = Counter(
        path for method, path, _ in fault_proxy.requests if method == "PUT" and "/manifests/" in path
    )
    for task in tasks:
        assert_target_complete(registry_plain, task["target"], pushed[task["source"]])
        name, tag = task["target"].split("/", 1)[1].rsplit(":", 1)
        assert puts[f"/v2/{name}/manifests/{tag}"] == 1, f"{task['target']} pushed once"
    assert sorted(t["id"] for t in others[1].tasks()) == sorted(t["id"] for t in tasks)


def pushed_event(registry: RegistryServer, proxy: FaultProxy, name: str) -> dict[str, Any]:
    """The webhook Harbor sends for ``name:v1`` (as pushed, with its manifest digest), through ``proxy``."""
    with httpx.Client(base_url=registry.url, timeout=10) as client:
        head = client.head(f"/v2/{name}/manifests/v1", headers={"Accept": ACCEPT})
    return push_event(f"{proxy.host}/{name}:v1", digest=head.headers["docker-content-digest"])


@pytest.mark.usefixtures("_skopeo")
def test_a_layer_converted_on_one_node_is_a_cache_hit_on_another(
    registry_plain: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path, nodes: Nodes, postgres_dsn: str
) -> None:
    _, layers_b = _images(registry_plain, tmp_path, repo="xnode")
    config = daemon_config(tmp_path, registry_plain, host=fault_proxy.host)
    config["converter"]["driver"] = {"type": "estargz"}
    config["converter"]["rules"] = [{"tag_suffix": "-esgz"}]
    a, b = (daemon.start() for daemon in nodes(2, postgres_dsn, config=config))
    assert a.webhook(pushed_event(registry_plain, fault_proxy, "xnode/a")).status_code == 200
    [first] = a.wait_all_final(1, timeout=60)
    assert (first["status"], first["cache_hits"], first["cache_misses"]) == ("COMPLETED", 0, 3), first
    a.stop()  # node-1 alone converts the second image; node-0's content store is out of reach
    fault_proxy.clear()
    assert b.webhook(pushed_event(registry_plain, fault_proxy, "xnode/b")).status_code == 200
    second = next(t for t in b.wait_all_final(2, timeout=60) if t["source"].endswith("/b:v1"))
    assert second["status"] == "COMPLETED", second["reason"]
    assert second["node"] == "node-1" and (second["cache_hits"], second["cache_misses"]) == (2, 1), second
    pulled = {
        path.rsplit("/", 1)[1]
        for method, path, _ in fault_proxy.requests
        if method == "GET" and path.startswith("/v2/xnode/b/blobs/")
    }
    assert pulled & set(layers_b) == {layers_b[1]}, "node-1 downloads only the layer the images do not share"
    assert_target_complete(registry_plain, second["target"], second["source_digest"])
