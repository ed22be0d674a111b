from __future__ import annotations

import httpx
import pytest

from accel.cli import tasks as accelctl
from accel.server.payload import parse_event


def test_push_payload_is_a_harbor_event() -> None:
    import json

    payload = accelctl.push_payload("harbor.dev:8443/library/app:v1")
    event = parse_event(json.dumps(payload).encode(), "application/json")
    assert event.push and event.resources[0].resource_url == "harbor.dev:8443/library/app:v1"
    assert event.resources[0].tag == "v1"
    assert payload["event_data"]["repository"] == {
        "name": "app",
        "namespace": "library",
        "repo_full_name": "library/app",
        "repo_type": "",
    }


def test_push_payload_by_digest_carries_the_digest() -> None:
    digest = "sha256:" + "a" * 64
    resource = accelctl.push_payload(f"h:5000/x@{digest}")["event_data"]["resources"][0]
    assert resource == {"tag": digest, "resource_url": f"h:5000/x@{digest}", "digest": digest}


def test_table_cuts_long_text() -> None:
    table = accelctl.format_table(
        [
            {
                "id": "1",
                "created": "t",
                "status": "FAILED",
                "attempts": 2,
                "source": "s" * 200,
                "reason": "r\nx",
            }
        ]
    )
    header, row = table.splitlines()
    assert header.split() == ["ID", "CREATED", "STATUS", "ATTEMPTS", "SOURCE", "REASON"]
    assert "s" * 77 + "..." in row and row.endswith("r x")


def test_error_messages_name_the_fix() -> None:
    refused = httpx.Response(401, json={"code": "ERR_UNAUTHORIZED", "message": "nope"})
    assert "ERR_UNAUTHORIZED: nope" in accelctl._describe_error(refused)
    assert "--token" in accelctl._describe_error(refused)
    forbidden = httpx.Response(403, json={"code": "ERR_FORBIDDEN", "message": "x"})
    assert "api_token" in accelctl._describe_error(forbidden)
    assert "HTTP 502" in accelctl._describe_error(httpx.Response(502, text="bad gateway"))


def test_unreachable_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        code = accelctl.main(["task", "list", "--addr", f"127.0.0.1:{port}"])
    assert code == accelctl.EXIT_UNREACHABLE
    assert f"cannot reach acceld at 127.0.0.1:{port}" in capsys.readouterr().err


def test_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv("ACCELCTL_AUTH", "hook")
    monkeypatch.setenv("ACCELCTL_TOKEN", "tok")
    parser = argparse.ArgumentParser()
    accelctl.register(parser.add_subparsers())
    args = parser.parse_args(["task", "create", "h/x:1"])
    assert (args.auth, args.token, args.addr, args.sync) == ("hook", "tok", "localhost:2077", False)
