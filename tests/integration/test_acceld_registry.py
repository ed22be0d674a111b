"""acceld as a real process with the real converter (``oci`` driver) against a real docker-registry."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from accel.config import SourceConfig, WebhookConfig
from accel.oci import mediatypes as mt
from tests.integration.test_acceld import (
    SECRET,
    TOKEN,
    Acceld,
    count_tasks,
    free_port,
    push_event,
    until,
)
from tests.support.configs import config_dict
from tests.support.faultproxy import FaultProxy
from tests.support.images import build_simple_image, push_layout, skopeo_available
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration

ACCEPT = ", ".join([mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST])


@pytest.fixture(autouse=True)
def _need_skopeo() -> None:
    if not skopeo_available():
        pytest.skip("skopeo is not installed")


def daemon_config(
    root: Path, registry: RegistryServer, worker: int = 2, host: str | None = None
) -> dict[str, Any]:
    """``host``: the address the daemon reaches the registry at (a proxy in front of it), if not its own."""
    source = registry.source().model_copy(update={"webhook": WebhookConfig(auth_header=SECRET)})
    sources: dict[str, SourceConfig] = {host or registry.host: source}
    return config_dict(
        root / "work",
        sources,
        driver="oci",
        tag_suffix="-oci",
        worker=worker,
        server__host="127.0.0.1",
        server__port=free_port(),
        server__api_token=TOKEN,
        server__task_lease=2,
        metric__enabled=True,
    )


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Acceld]]:
    started: list[Acceld] = []

    def make(registry: RegistryServer, host: str | None = None) -> Acceld:
        daemon = Acceld(tmp_path, daemon_config(tmp_path, registry, host=host), fake=False)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def push_images(registry: RegistryServer, root: Path, names: list[str], media: Any = "oci") -> dict[str, str]:
    """Build one small distinct image per name and push it; returns {reference: manifest digest}."""
    pushed = {}
    for n, name in enumerate(names):
        layout = root / f"layout-{n}"
        build_simple_image(
            layout, {f"data/{n}.txt": f"image {n} {name}\n".encode() * 100}, tag="v1", media=media
        )
        ref = f"{registry.host}/{name}:v1"
        pushed[ref] = push_layout(layout, ref, tag="v1", tls_verify=False, format=None)
    return pushed


def assert_target_complete(registry: RegistryServer, target: str, source_digest: str) -> None:
    """The target tag resolves, carries our source-digest annotation, and every blob it names exists."""
    name, tag = target.split("/", 1)[1].rsplit(":", 1)
    with httpx.Client(base_url=registry.url, timeout=10) as client:

        def manifest(ref: str) -> dict[str, Any]:
            response = client.get(f"/v2/{name}/manifests/{ref}", headers={"Accept": ACCEPT})
            assert response.status_code == 200, (target, ref, response.status_code)
            data: dict[str, Any] = response.json()
            return data

        top = manifest(tag)
        assert source_digest in top.get("annotations", {}).values()
        documents = [manifest(d["digest"]) for d in top["manifests"]] if "manifests" in top else [top]
        for document in documents:
            for blob in [document["config"], *document["layers"]]:
                assert client.head(f"/v2/{name}/blobs/{blob['digest']}").status_code == 200, blob


def test_burst_converts_each_image_once(
    registry_plain: RegistryServer, tmp_path: Path, make_daemon: Callable[[RegistryServer], Acceld]
) -> None:
    names = [f"burst{random.randrange(1 << 30)}/app{n}" for n in range(10)]
    pushed = push_images(registry_plain, tmp_path, names)
    daemon = make_daemon(registry_plain).start()
    events: list[dict[str, Any]] = []
    for ref, digest in pushed.items():
        events += [push_event(ref, digest=digest)] * 7
        for arch in range(3):
            child = "sha256:" + f"{arch:02d}".ljust(64, "c")
            events.append(push_event(f"{ref.rsplit(':', 1)[0]}@{child}", tag=child, digest=child))
    random.Random(7).shuffle(events)
    with daemon.client() as client, ThreadPoolExecutor(16) as pool:

        def send(payload: dict[str, Any]) -> tuple[int, float]:
            begin = time.perf_counter()
            response = client.post("/api/v1/conversions", json=payload, headers={"Authorization": SECRET})
            return response.status_code, time.perf_counter() - begin

        results = list(pool.map(send, events))
    assert len(results) == 100 and all(status == 200 for status, _ in results)
    assert max(elapsed for _, elapsed in results) < 3.0
    tasks = daemon.wait_all_final(10, timeout=120)
    assert all(t["status"] == "COMPLETED" for t in tasks), [(t["source"], t["reason"]) for t in tasks]
    converted = [t for t in tasks if not t["reason"]]
    assert sorted(t["source"] for t in converted) == sorted(pushed)
    with daemon.client() as client:
        metrics = client.get("/metrics").text
    assert 'acceleration_service_core_conversions_op_total{op="convert"} 10.0' in metrics
    for task in converted:
        assert task["source_digest"] == pushed[task["source"]]
        assert_target_complete(registry_plain, task["target"], task["source_digest"])


def test_sigkill_mid_conversion_then_restart(
    registry_plain: RegistryServer, tmp_path: Path, make_daemon: Callable[[RegistryServer], Acceld]
) -> None:
    names = [f"kill{random.randrange(1 << 30)}/app{n}" for n in range(8)]
    pushed = push_images(registry_plain, tmp_path, names, media="docker")
    daemon = make_daemon(registry_plain).start()
    for ref, digest in pushed.items():
        assert daemon.webhook(push_event(ref, digest=digest)).status_code == 200
    until(lambda: any(t["status"] != "PENDING" for t in daemon.tasks()), 30, "a conversion to start")
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    daemon.start()
    tasks = daemon.wait_all_final(8, timeout=120)
    assert len(tasks) == 8
    assert all(t["status"] == "COMPLETED" for t in tasks), [(t["source"], t["reason"]) for t in tasks]
    for task in tasks:
        assert_target_complete(registry_plain, task["target"], pushed[task["source"]])


def test_registry_down_then_back(
    restartable_registry: RegistryServer, tmp_path: Path, make_daemon: Callable[[RegistryServer], Acceld]
) -> None:
    [(ref, digest)] = push_images(restartable_registry, tmp_path, ["down/app"]).items()
    daemon = make_daemon(restartable_registry).start()
    restartable_registry.stop()
    begin = time.perf_counter()
    response = daemon.webhook(push_event(ref, digest=digest))
    assert response.status_code == 200 and time.perf_counter() - begin < 3.0
    task_id = response.headers["x-accel-tasks"]

    def task() -> dict[str, Any]:
        with daemon.client() as client:
            data: dict[str, Any] = client.get(
                f"/api/v1/conversions/{task_id}", headers={"Authorization": f"Bearer {TOKEN}"}
            ).json()
            return data

    until(lambda: task()["status"] == "PENDING" and "attempt 1 failed" in task()["reason"], 60, "a retry")
    restartable_registry.start()
    done = until(lambda: (t := task())["status"] in ("COMPLETED", "FAILED") and t, 90, "the retried task")
    assert done["status"] == "COMPLETED" and done["attempts"] >= 2, done
    assert_target_complete(restartable_registry, done["target"], digest)


def test_webhook_answer_tells_the_truth(
    registry_plain: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    make_daemon: Callable[..., Acceld],
) -> None:
    """503 only when nothing was saved; 2xx carries the ids; redeliveries add no task (issue 18, 1)."""
    names = [f"truth{random.randrange(1 << 30)}/app{n}" for n in range(4)]
    direct = push_images(registry_plain, tmp_path, names)
    # The daemon reaches the registry through a proxy, so the test can keep the tasks queued or running
    # while Harbor's redeliveries arrive (a redelivery after they finished is a new push, rightly).
    pushed = {ref.replace(registry_plain.host, fault_proxy.host): d for ref, d in direct.items()}
    daemon = make_daemon(registry_plain, host=fault_proxy.host).start()
    payload = push_event(next(iter(pushed)))
    payload["event_data"]["resources"] = [
        {"digest": digest, "tag": "v1", "resource_url": ref} for ref, digest in pushed.items()
    ]
    blocker = sqlite3.connect(daemon.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # a stalled task database
    try:
        stalled = daemon.webhook(payload)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert stalled.status_code == 503 and "x-accel-tasks" not in stalled.headers
    until(lambda: "tasks withdrawn before commit" in daemon.log_text(), 30, "the withdrawn write")
    assert count_tasks(daemon) == 0
    hold = fault_proxy.hold("GET", r"/manifests/", after=0, times=8)  # the workers' first reads wait
    try:
        answers = [daemon.webhook(payload)]  # Harbor's first redelivery saves the tasks
        # The next redeliveries arrive once a worker is in the middle of a task (held on its first read),
        # not whenever the worker threads happen to get there.
        assert hold.reached.wait(30), "a worker started on the saved tasks"
        answers += [daemon.webhook(payload) for _ in range(2)]
    finally:
        hold.release.set()
    assert [a.status_code for a in answers] == [200] * 3
    assert hold.hits >= 1, "the tasks were held while the redeliveries arrived"
    ids = answers[0].headers["x-accel-tasks"].split(",")
    assert len(set(ids)) == 4 and all(a.headers["x-accel-tasks"].split(",") == ids for a in answers)
    tasks = daemon.wait_all_final(4, timeout=120)
    assert sorted(t["id"] for t in tasks) == sorted(ids)
    assert all(t["status"] == "COMPLETED" for t in tasks), [(t["source"], t["reason"]) for t in tasks]
    for task in tasks:
        assert_target_complete(registry_plain, task["target"], pushed[task["source"]])
