from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient; httpx still works
    from starlette.testclient import TestClient

from accel.config import Config, parse_config
from accel.errors import InvalidReferenceError
from accel.metrics import Metrics
from accel.server import create_app
from accel.tasks import SQLiteTaskStore, TaskEngine, TaskRetryPolicy
from tests.unit.tasks.fake_converter import FakeConverter

SECRET = "Bearer harbor-webhook-s3cret"
OTHER_SECRET = "other-host-secret"
TOKEN = "api-t0ken-value"
ROBOT_AUTH = "cm9ib3QkYWNjZWxkOnJvYm90LXBhc3N3b3Jk"  # robot$acceld:robot-password
DIGEST = "sha256:dde8e930c7b6a490f728e66292bc9bce42efc9bbb5278bae40e4f30f6e00fe8c"

# Spec section 1.4, verbatim apart from the operator (robot$acceld is our own account in these tests).
DEFAULT_PAYLOAD: dict[str, Any] = {
    "type": "PUSH_ARTIFACT",
    "occur_at": 1724212345,
    "operator": "admin",
    "event_data": {
        "resources": [
            {
                "digest": DIGEST,
                "tag": "latest",
                "resource_url": "harbor.dev/library/busybox:latest",
            }
        ],
        "repository": {
            "date_created": 1677053165,
            "name": "busybox",
            "namespace": "library",
            "repo_full_name": "library/busybox",
            "repo_type": "public",
        },
    },
}

# Spec section 1.5.
CLOUD_PAYLOAD: dict[str, Any] = {
    "specversion": "1.0",
    "id": "4b4c8f2a-3a4e-4a39-9b3a-1b6b7c0e5d11",
    "requestid": "9e3c1f3e-7d0b-4a8f-8f2c-5f4d2a1b0c9d",
    "source": "/projects/1/webhook/policies/2",
    "type": "harbor.artifact.pushed",
    "datacontenttype": "application/json",
    "time": "2024-08-21T04:32:25Z",
    "operator": "admin",
    "data": DEFAULT_PAYLOAD["event_data"],
}


def make_config(tmp_path: Path, *, token: str = TOKEN, metrics: bool = True) -> Config:
    return parse_config(
        {
            "server": {"api_token": token},
            "metric": {"enabled": metrics},
            "provider": {
                "work_dir": str(tmp_path),
                "source": {
                    "harbor.dev": {"auth": ROBOT_AUTH, "webhook": {"auth_header": SECRET}},
                    "other.dev:5000": {"webhook": {"auth_header": OTHER_SECRET}},
                    "open.dev": {},
                },
            },
            "converter": {"worker": 2, "driver": {"type": "estargz"}},
        }
    )


class Harness:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.fake = FakeConverter()
        self.config = make_config(tmp_path, **config)
        self.metrics = Metrics()
        self.engine = TaskEngine(
            SQLiteTaskStore(tmp_path / "tasks.db"),
            self.fake,
            workers=2,
            metrics=self.metrics,
            retry=TaskRetryPolicy(max_attempts=2, backoff_initial=0.01),
        )
        self.app = create_app(self.config, self.engine, self.metrics, shutdown_grace=2)

    def client(self, host: str = "testclient") -> TestClient:
        return TestClient(self.app, client=(host, 40000), raise_server_exceptions=False)


def webhook(client: TestClient, payload: Any = DEFAULT_PAYLOAD, auth: str | None = SECRET, **kw: Any) -> Any:
    headers = {"Authorization": auth} if auth is not None else {}
    headers.update(kw.pop("headers", {}))
    return client.post("/api/v1/conversions", json=payload, headers=headers, **kw)


def api(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_status(client: TestClient, task_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        task: dict[str, Any] = client.get(f"/api/v1/conversions/{task_id}", headers=api()).json()
        if task["status"] == status:
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.01)


def test_default_payload_queues_a_task(client: TestClient, harness: Harness) -> None:
    response = webhook(client)
    assert response.status_code == 200 and response.json() == "Ok"
    [task_id] = response.headers["x-accel-tasks"].split(",")
    task = wait_status(client, task_id, "COMPLETED")
    assert task["source"] == "harbor.dev/library/busybox:latest"
    assert task["target"] == "harbor.dev/library/busybox:latest-fake"
    assert set(task) == {
        "id", "created", "started", "finished", "source", "target", "source_digest", "target_digest",
        "driver", "source_size", "target_size", "status", "reason", "attempts", "cache_hits", "cache_misses",
        "cache_saved", "bytes_in", "bytes_out", "timings", "node",
    }  # fmt: skip
    assert harness.fake.conversions == ["harbor.dev/library/busybox:latest"]


def test_cloudevents_payload_queues_a_task(client: TestClient, harness: Harness) -> None:
    body = json.dumps(CLOUD_PAYLOAD)
    headers = {"Authorization": SECRET, "Content-Type": "application/cloudevents+json"}
    response = client.post("/api/v1/conversions", content=body, headers=headers)
    assert response.status_code == 200
    wait_status(client, response.headers["x-accel-tasks"], "COMPLETED")
    assert harness.fake.conversions == ["harbor.dev/library/busybox:latest"]


@pytest.mark.parametrize(
    ("auth", "status"),
    [(None, 401), ("", 401), ("Bearer wrong", 401), (OTHER_SECRET, 401), (SECRET + " ", 401)],
)
def test_webhook_auth_is_enforced(
    client: TestClient, harness: Harness, auth: str | None, status: int
) -> None:
    response = webhook(client, auth=auth)
    assert response.status_code == status
    assert response.json()["code"] == "ERR_UNAUTHORIZED"
    assert harness.engine.list_tasks() == []


def test_host_lookup_ignores_case(client: TestClient) -> None:
    payload = json.loads(json.dumps(DEFAULT_PAYLOAD))
    payload["event_data"]["resources"][0]["resource_url"] = "HARBOR.dev/library/busybox:latest"
    assert webhook(client, payload).status_code == 200
    assert webhook(client, payload, auth=OTHER_SECRET).status_code == 401


def test_api_token_may_create_tasks(client: TestClient) -> None:
    assert webhook(client, auth=f"Bearer {TOKEN}").status_code == 200


def test_source_without_auth_header_refuses_webhooks(client: TestClient) -> None:
    payload = json.loads(json.dumps(DEFAULT_PAYLOAD))
    payload["event_data"]["resources"][0]["resource_url"] = "open.dev/library/busybox:latest"
    assert webhook(client, payload, auth=SECRET).status_code == 401


def test_unknown_host_is_rejected_without_contact(client: TestClient, harness: Harness) -> None:
    payload = json.loads(json.dumps(DEFAULT_PAYLOAD))
    payload["event_data"]["resources"][0]["resource_url"] = "evil.example/library/busybox:latest"
    response = webhook(client, payload)
    assert response.status_code == 400 and response.json()["code"] == "ERR_ILLEGAL_PARAMETER"
    assert "evil.example" in response.json()["message"]
    assert harness.engine.list_tasks() == [] and harness.fake.inspections == []


def test_other_event_types_are_ignored(client: TestClient, harness: Harness) -> None:
    payload = {**DEFAULT_PAYLOAD, "type": "DELETE_ARTIFACT"}
    response = webhook(client, payload)
    assert response.status_code == 200 and response.json() == "Ok"
    assert "x-accel-tasks" not in response.headers
    assert harness.engine.list_tasks() == []


def test_child_manifest_events_are_ignored(client: TestClient, harness: Harness) -> None:
    payload = json.loads(json.dumps(DEFAULT_PAYLOAD))
    payload["event_data"]["resources"][0].update(
        tag=DIGEST, resource_url=f"harbor.dev/library/busybox@{DIGEST}"
    )
    assert webhook(client, payload).status_code == 200
    assert harness.engine.list_tasks() == []


def test_own_robot_account_pushes_are_ignored(client: TestClient, harness: Harness) -> None:
    payload = {**DEFAULT_PAYLOAD, "operator": "robot$acceld"}
    assert webhook(client, payload).status_code == 200
    assert harness.engine.list_tasks() == []


def test_duplicates_merge_into_one_task(harness: Harness) -> None:
    harness.fake.gate = threading.Event()
    harness.fake.digests["harbor.dev/library/busybox:latest"] = DIGEST
    with harness.client() as client:
        ids = {webhook(client).headers["x-accel-tasks"]}
        assert harness.fake.started.wait(5)  # converting: the task knows its digest now
        ids |= {webhook(client).headers["x-accel-tasks"] for _ in range(4)}
        harness.fake.gate.set()
        assert len(ids) == 1
        wait_status(client, ids.pop(), "COMPLETED")
    assert harness.fake.conversions == ["harbor.dev/library/busybox:latest"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'"Ok"',
        b'{"type": 5}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": "x"}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": 7}]}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": "no-repo"}]}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": "u:p@harbor.dev/a:1"}]}}',
        b'{"specversion": "1.0", "type": "harbor.artifact.pushed", "data": []}',
        b"\xff\xfe",
    ],
)
def test_malformed_bodies_are_400(client: TestClient, harness: Harness, body: bytes) -> None:
    response = client.post("/api/v1/conversions", content=body, headers={"Authorization": SECRET})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "ERR_ILLEGAL_PARAMETER"
    assert harness.engine.list_tasks() == []


def test_huge_body_is_413(client: TestClient) -> None:
    body = b'{"type": "PUSH_ARTIFACT", "x": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    response = client.post("/api/v1/conversions", content=body, headers={"Authorization": SECRET})
    assert response.status_code == 413 and response.json()["code"] == "ERR_ILLEGAL_PARAMETER"


def test_bad_query_parameter_is_400(client: TestClient) -> None:
    response = webhook(client, params={"sync": "maybe"})
    assert response.status_code == 400 and response.json()["code"] == "ERR_ILLEGAL_PARAMETER"


def test_unknown_route_and_method(client: TestClient) -> None:
    response = client.get("/api/v2/nothing")
    assert response.status_code == 404
    assert response.json() == {"code": "ERR_INVALID_ENDPOINT", "message": "Endpoint not found"}
    assert client.delete("/api/v1/health").status_code == 405


def test_task_api_needs_the_token(client: TestClient) -> None:
    for headers in ({}, api("wrong"), {"Authorization": TOKEN}, {"Authorization": SECRET}):
        response = client.get("/api/v1/conversions", headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "ERR_UNAUTHORIZED"
    assert client.get("/api/v1/conversions/x", headers={}).status_code == 401
    assert client.post("/api/v1/conversions/x/cancel").status_code == 401
    assert client.get("/api/v1/conversions", headers=api()).json() == []


def test_without_token_only_local_clients_read(tmp_path: Path) -> None:
    harness = Harness(tmp_path, token="")
    with harness.client("203.0.113.7") as remote:
        response = remote.get("/api/v1/conversions", headers=api("anything"))
        assert response.status_code == 403 and response.json()["code"] == "ERR_FORBIDDEN"
    with harness.client("127.0.0.1") as local:
        assert local.get("/api/v1/conversions").status_code == 200
    with harness.client("::1") as local6:
        assert local6.get("/api/v1/conversions").status_code == 200


def test_show_cancel_retry(harness: Harness) -> None:
    harness.fake.inspect_errors = [InvalidReferenceError("no such image")]
    with harness.client() as client:
        task_id = webhook(client).headers["x-accel-tasks"]
        failed = wait_status(client, task_id, "FAILED")
        assert failed["reason"] == "no such image" and failed["finished"]
        conflict = client.post(f"/api/v1/conversions/{task_id}/cancel", headers=api())
        assert conflict.status_code == 409 and conflict.json()["code"] == "ERR_CONFLICT"
        retried = client.post(f"/api/v1/conversions/{task_id}/retry", headers=api())
        assert retried.status_code == 200 and retried.json()["status"] == "PENDING"
        wait_status(client, task_id, "COMPLETED")
        missing = client.get("/api/v1/conversions/nope", headers=api())
        assert missing.status_code == 404 and missing.json()["code"] == "ERR_NOT_FOUND"
        listed = client.get("/api/v1/conversions", headers=api(), params={"status": "COMPLETED"}).json()
        assert [t["id"] for t in listed] == [task_id]


def test_cancel_pending_task(harness: Harness) -> None:
    harness.fake.gate = threading.Event()
    with harness.client() as client:
        first = webhook(client).headers["x-accel-tasks"]
        payload = json.loads(json.dumps(DEFAULT_PAYLOAD))
        for n in range(2):
            payload["event_data"]["resources"][0]["resource_url"] = f"harbor.dev/library/app{n}:1"
            webhook(client, payload)
        queued = [
            t for t in client.get("/api/v1/conversions", headers=api()).json() if t["status"] == "PENDING"
        ]
        canceled = client.post(f"/api/v1/conversions/{queued[0]['id']}/cancel", headers=api()).json()
        assert canceled["status"] == "CANCELED"
        harness.fake.gate.set()
        wait_status(client, first, "COMPLETED")


def test_sync_waits_for_the_result(client: TestClient, harness: Harness) -> None:
    response = webhook(client, params={"sync": "true"})
    assert response.status_code == 200
    task = client.get(f"/api/v1/conversions/{response.headers['x-accel-tasks']}", headers=api()).json()
    assert task["status"] == "COMPLETED"


def test_sync_failure_is_500_with_reason(client: TestClient, harness: Harness) -> None:
    harness.fake.inspect_errors = [InvalidReferenceError("manifest unknown")]
    response = webhook(client, params={"sync": "true"})
    assert response.status_code == 500
    assert response.json() == {
        "code": "ERR_CONVERT_FAILED",
        "message": "harbor.dev/library/busybox:latest: manifest unknown",
    }


def test_health(client: TestClient) -> None:
    response = client.get("/api/v1/health")
    assert response.status_code == 200 and response.text == "Ok"


def test_metrics_endpoint(client: TestClient) -> None:
    webhook(client)
    client.get("/nowhere")
    text = client.get("/metrics").text
    assert (
        'acceleration_service_api_requests_total{code="200",host="0.0.0.0:2077",method="POST",'
        'url="/api/v1/conversions"} 1.0' in text
    )
    assert (
        'acceleration_service_api_requests_total{code="404",host="0.0.0.0:2077",method="GET",url="/*"} 1.0'
        in text
    )
    assert "acceleration_service_core_queue_depth" in text
    assert 'acceleration_service_core_webhook_resources_total{result="queued"} 1.0' in text
    client.request("BREW", "/x", headers={"Host": "evil.example"})
    text = client.get("/metrics").text
    assert "BREW" not in text and "evil.example" not in text and 'method="OTHER"' in text


def test_metrics_disabled(tmp_path: Path) -> None:
    with Harness(tmp_path, metrics=False).client() as client:
        assert client.get("/metrics").status_code == 404


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/conversions", "/api/v1/conversions/{task_id}", "/api/v1/health"} <= set(spec["paths"])
    body = spec["paths"]["/api/v1/conversions"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/HarborEvent"}
    assert {"HarborEvent", "CloudEvent", "Resource", "ErrorBody", "TaskView"} <= set(
        spec["components"]["schemas"]
    )


def test_no_credential_in_responses_or_logs(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [SECRET, "harbor-webhook-s3cret", TOKEN, "robot-password", ROBOT_AUTH, OTHER_SECRET]
    seen: list[str] = []
    with harness.client() as client:
        for auth in (SECRET, "Bearer nope", None):
            response = webhook(client, auth=auth)
            seen.append(response.text + str(dict(response.headers)))
        for path in ("/api/v1/conversions", "/metrics", "/openapi.json"):
            seen.append(client.get(path, headers=api()).text)
    seen.append(caplog.text)
    seen.extend(json.dumps(t.to_dict()) for t in harness.engine.list_tasks())
    for secret in secrets:
        assert not any(secret in text for text in seen), secret


def test_several_apps_side_by_side(tmp_path: Path) -> None:
    first, second = Harness(tmp_path / "a"), Harness(tmp_path / "b")
    with first.client() as one, second.client() as two:
        webhook(one)
        assert one.get("/api/v1/health").status_code == two.get("/api/v1/health").status_code == 200
    assert (
        first.metrics.registry.get_sample_value(
            "acceleration_service_core_webhook_resources_total", {"result": "queued"}
        )
        == 1
    )
    assert (
        second.metrics.registry.get_sample_value(
            "acceleration_service_core_webhook_resources_total", {"result": "queued"}
        )
        is None
    )


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    response = client.request("OPTIONS", "/api/v1/conversions")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


def test_payload_types_are_strict(client: TestClient, harness: Harness) -> None:
    payload = json.loads(json.dumps(DEFAULT_PAYLOAD))
    payload["event_data"]["repository"]["date_created"] = False
    response = webhook(client, payload)
    assert response.status_code == 400 and "date_created" in response.json()["message"]
    assert harness.engine.list_tasks() == []


def test_slow_store_answers_503_in_time(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    import accel.server.app as app_module

    release = threading.Event()
    store = harness.engine.store
    original_add = store.add_many

    def stuck_add(tasks: Any) -> None:
        release.wait(10)
        original_add(tasks)

    monkeypatch.setattr(app_module, "ENQUEUE_TIMEOUT", 0.2)
    monkeypatch.setattr(store, "add_many", stuck_add)
    with harness.client() as client:
        begin = time.monotonic()
        response = webhook(client)
        assert time.monotonic() - begin < 3
        release.set()
        assert response.status_code == 503 and response.json()["code"] == "ERR_UNAVAILABLE"
        # Harbor retries the delivery: the image is still converted once, whether the retry merged into the
        # task the slow write created meanwhile or was deduplicated after inspect.
        retried = webhook(client)
        assert retried.status_code == 200
        wait_status(client, retried.headers["x-accel-tasks"], "COMPLETED")
        tasks = harness.engine.wait([t.id for t in harness.engine.list_tasks()], 5)
    assert tasks and all(t.status.value == "COMPLETED" for t in tasks)
    assert harness.fake.conversions == ["harbor.dev/library/busybox:latest"]
