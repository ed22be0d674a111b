"""What the dashboard stands on: the summary and submit endpoints, the CSRF guard, and pages served from
the package with a policy that forbids other origins (the browser tests in tests/ui drive the page)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.server.payload import REFERENCE_PATTERN, parse_reference
from tests.unit.server.test_app import TOKEN, Harness, TestClient, api, wait_status, webhook


def test_summary_counts_the_queue_and_the_last_day(client: TestClient, harness: Harness) -> None:
    [done] = webhook(client).headers["x-accel-tasks"].split(",")
    wait_status(client, done, "COMPLETED")
    harness.fake.errors.append(FormatError("broken layer"))
    failed = client.post(
        "/api/v1/submit", json={"source": "harbor.dev/library/other:v2"}, headers=api()
    ).json()[0]["id"]
    wait_status(client, failed, "FAILED")

    summary = client.get("/api/v1/summary", headers=api()).json()

    assert summary["completed"] == 1 and summary["failed"] == 1 and summary["pending"] == 0
    assert summary["success_rate"] == 0.5
    task = client.get(f"/api/v1/conversions/{done}", headers=api()).json()
    assert summary["bytes_in"] == task["bytes_in"] and summary["bytes_out"] == task["bytes_out"]
    assert client.get("/api/v1/summary").status_code == 401


def test_submit_queues_like_a_push(client: TestClient, harness: Harness) -> None:
    response = client.post(
        "/api/v1/submit", json={"source": "harbor.dev/library/busybox:1.36"}, headers=api()
    )

    assert response.status_code == 200, response.text
    [task] = response.json()
    assert task["source"] == "harbor.dev/library/busybox:1.36" and task["status"] in ("PENDING", "PROCESSING")
    wait_status(client, task["id"], "COMPLETED")
    assert harness.fake.conversions == ["harbor.dev/library/busybox:1.36"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"source": "unknown.example/x:y"}, 403, "ERR_FORBIDDEN"),
        ({"source": "not a reference"}, 400, "ERR_ILLEGAL_PARAMETER"),
        ({"image": "harbor.dev/x:y"}, 400, "ERR_ILLEGAL_PARAMETER"),
    ],
)
def test_submit_refuses_bad_requests(client: TestClient, body: object, status: int, code: str) -> None:
    response = client.post("/api/v1/submit", json=body, headers=api())

    assert response.status_code == status and response.json()["code"] == code
    assert client.get("/api/v1/conversions", headers=api()).json() == []


def test_submit_needs_the_token(client: TestClient) -> None:
    response = client.post("/api/v1/submit", json={"source": "harbor.dev/a:b"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_state_changes_are_refused_without_a_token_too(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    """With no api_token, loopback clients need none: a page on another site must still not act."""
    harness = Harness(tmp_path, token="")
    with harness.client(host="127.0.0.1") as client:
        response = client.post("/api/v1/submit", json={"source": "harbor.dev/a:b"}, headers=headers)
        assert response.status_code == 403 and "refused" in response.json()["message"]
        same = client.post(
            "/api/v1/submit",
            json={"source": "harbor.dev/a:b"},
            headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        )
        assert same.status_code == 200, same.text


def test_root_redirects_to_the_dashboard(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui/"


@pytest.mark.parametrize("path", ["/ui/", "/ui/app.js", "/ui/app.css", "/docs"])
def test_pages_name_no_other_origin(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "http" not in policy
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", response.text), "an asset from another origin"
    assert "cdn.jsdelivr" not in response.text and "unpkg" not in response.text


def test_docs_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/docs").text
    for asset in re.findall(r"['\"](/docs/assets/[^'\"]+)['\"]", page):
        assert client.get(asset).status_code == 200, asset
    assert "/docs/assets/swagger-ui-bundle.js" in page
    assert client.get("/openapi.json").json()["paths"]["/api/v1/summary"]


def test_token_is_never_in_a_page(client: TestClient) -> None:
    for path in ("/ui/", "/ui/app.js", "/docs"):
        assert TOKEN not in client.get(path).text


@pytest.mark.parametrize(
    "value",
    [
        "harbor.dev/library/busybox:1.36",
        "127.0.0.1:5000/a/b/c@sha256:" + "ab" * 32,
        "harbor.dev/x:tag@sha256:" + "0" * 64,
        "harbor.dev/UPPER:v1",
        "harbor.dev:99999999/x:v1",
        "nohost",
        "harbor.dev/x@md5:" + "0" * 32,
    ],
)
def test_the_schema_pattern_accepts_only_what_the_parser_accepts(value: str) -> None:
    """The submit schema's pattern (what API clients and fuzzers read) never admits what the server
    then refuses."""
    if re.fullmatch(REFERENCE_PATTERN, value):
        assert parse_reference(value).host
