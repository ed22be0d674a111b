"""acceld as a real process (``.venv/bin/acceld --config``), driven over HTTP like Harbor and accelctl do.

These tests plug a scripted converter in (ACCELD_CONVERTER_FACTORY) so that process-level behaviour —
latency, auth, dedup, crash recovery, signals, unix socket, logs — is tested without registry timing noise;
test_acceld_registry.py runs the real converter against a real registry.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from accel.cli import tasks as accelctl
from tests.unit.tasks.fake_converter import digest_of

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ACCELD = Path(sys.executable).parent / "acceld"
SECRET = "hook-s3cret-value"
TOKEN = "integration-token"
HOST = "harbor.test"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def push_event(source: str, *, tag: str | None = None, digest: str | None = None) -> dict[str, Any]:
    """A Default-format PUSH_ARTIFACT payload shaped exactly like spec section 1.4."""
    name = source.split("@")[0]
    repo_full = name.split("/", 1)[1].rsplit(":", 1)[0]
    namespace, _, short = repo_full.rpartition("/")
    return {
        "type": "PUSH_ARTIFACT",
        "occur_at": int(time.time()),
        "operator": "admin",
        "event_data": {
            "resources": [
                {
                    "digest": digest or digest_of(source),
                    "tag": tag if tag is not None else source.rsplit(":", 1)[1],
                    "resource_url": source,
                }
            ],
            "repository": {
                "date_created": 1677053165,
                "name": short,
                "namespace": namespace,
                "repo_full_name": repo_full,
                "repo_type": "private",
            },
        },
    }


class Acceld:
    """One acceld process; ``start()`` waits for /api/v1/health, ``stop()`` sends SIGTERM."""

    def __init__(
        self, root: Path, config: dict[str, Any], env: dict[str, str] | None = None, *, fake: bool = True
    ) -> None:
        self.root = root
        self.fake = fake
        self.config = config
        self.env = env or {}
        self.config_file = root / "acceld.yaml"
        self.log_file = root / "acceld.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.grace = 10.0
        uds = config.get("server", {}).get("uds")
        self.addr = f"unix://{uds}" if uds else f"127.0.0.1:{config['server']['port']}"

    def client(self, timeout: float = 10.0) -> httpx.Client:
        if self.addr.startswith("unix://"):
            transport = httpx.HTTPTransport(uds=self.addr.removeprefix("unix://"))
            return httpx.Client(transport=transport, base_url="http://acceld", timeout=timeout)
        return httpx.Client(base_url=f"http://{self.addr}", timeout=timeout)

    def start(self, timeout: float = 30.0, **env: str) -> Acceld:
        self.config_file.write_text(yaml.safe_dump(self.config))
        # The tree under test first (a caller's PYTHONPATH names it), never the checkout the venv installed.
        tree = [os.environ.get("PYTHONPATH", ""), str(REPO_ROOT / "src"), str(REPO_ROOT)]
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in tree if p), **self.env, **env}
        if self.fake:
            environment["ACCELD_CONVERTER_FACTORY"] = "tests.unit.tasks.fake_converter:factory"
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(ACCELD), "--config", str(self.config_file), "--shutdown-grace", str(self.grace)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        deadline = time.monotonic() + timeout
        with self.client(timeout=1.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"acceld exited early:\n{self.log_text()[-3000:]}")
                try:
                    if client.get("/api/v1/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"acceld not ready:\n{self.log_text()[-3000:]}")
                time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    @property
    def db(self) -> Path:
        return Path(self.config["provider"]["work_dir"]) / "tasks.db"

    @property
    def conversions(self) -> list[str]:
        path = Path(self.config["provider"]["work_dir"]) / "fake-converter" / "conversions.log"
        return path.read_text().split() if path.exists() else []

    # -- API helpers --------------------------------------------------------------------------------------

    def webhook(
        self, payload: Any, auth: str | None = SECRET, client: httpx.Client | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Sends one webhook; a caller that sends many passes its own keep-alive ``client``."""
        if client is None:
            with self.client() as own:
                return self.webhook(payload, auth, own, **kwargs)
        headers = {"Authorization": auth} if auth is not None else {}
        return client.post("/api/v1/conversions", json=payload, headers=headers, **kwargs)

    def tasks(self, client: httpx.Client | None = None) -> list[dict[str, Any]]:
        """The task list; a caller that polls passes its own keep-alive ``client``."""
        if client is None:
            with self.client() as own:
                return self.tasks(own)
        response = client.get("/api/v1/conversions", headers={"Authorization": f"Bearer {TOKEN}"})
        response.raise_for_status()
        return list(response.json())

    def wait_all_final(self, expected: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            tasks = self.tasks()
            final = [t for t in tasks if t["status"] in ("COMPLETED", "FAILED", "CANCELED")]
            return tasks if len(tasks) >= expected and len(final) == len(tasks) else None

        return list(until(done, timeout, f"{expected} final tasks"))


def base_config(root: Path, **server: Any) -> dict[str, Any]:
    return {
        # A short lease: a killed daemon's tasks are taken back (by the restarted one) within seconds.
        "server": {"host": "127.0.0.1", "port": free_port(), "api_token": TOKEN, "task_lease": 2, **server},
        "metric": {"enabled": True},
        "provider": {"work_dir": str(root / "work"), "source": {HOST: {"webhook": {"auth_header": SECRET}}}},
        "converter": {"worker": 2, "driver": {"type": "estargz"}, "rules": [{"tag_suffix": "-fake"}]},
    }


@pytest.fixture
def make_acceld(tmp_path: Path) -> Iterator[Callable[..., Acceld]]:
    started: list[Acceld] = []

    def make(config: dict[str, Any] | None = None, **env: str) -> Acceld:
        daemon = Acceld(tmp_path, config or base_config(tmp_path), env)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def image(n: int) -> str:
    return f"{HOST}/library/app{n}:v1"


def test_auth_and_bad_requests(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld().start()
    ok = daemon.webhook(push_event(image(0)))
    assert ok.status_code == 200 and ok.json() == "Ok"
    for auth in (None, "wrong", f"Bearer {SECRET}"):
        refused = daemon.webhook(push_event(image(1)), auth=auth)
        assert refused.status_code == 401 and refused.json()["code"] == "ERR_UNAUTHORIZED"
    with daemon.client() as client:
        listed = client.get("/api/v1/conversions")
        assert listed.status_code == 401 and listed.json()["code"] == "ERR_UNAUTHORIZED"
        cases = [
            client.post("/api/v1/conversions", content=b"{oops", headers={"Authorization": SECRET}),
            client.post("/api/v1/conversions", json={"type": ["x"]}, headers={"Authorization": SECRET}),
            client.post(
                "/api/v1/conversions", content=b"x" * (10 * 1024 * 1024), headers={"Authorization": SECRET}
            ),
            client.get("/no/such/route"),
            client.put("/api/v1/conversions"),
        ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"code", "message"}
    [task] = daemon.wait_all_final(1)
    assert task["source"] == image(0) and task["status"] == "COMPLETED"


def test_burst_of_100_webhooks(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld(FAKE_CONVERTER_DELAY="0.2").start()
    events: list[dict[str, Any]] = []
    for n in range(10):
        source = image(n)
        events += [push_event(source)] * 7
        for arch in range(3):  # child manifests of a multi-arch push arrive by digest, without a tag
            child = "sha256:" + f"{n:02d}{arch:02d}".ljust(64, "0")
            events.append(push_event(f"{source.split(':')[0]}@{child}", tag=child, digest=child))
    random.Random(4).shuffle(events)
    assert len(events) == 100

    with daemon.client() as client:

        def send(payload: dict[str, Any]) -> tuple[int, float]:
            begin = time.perf_counter()
            response = client.post("/api/v1/conversions", json=payload, headers={"Authorization": SECRET})
            return response.status_code, time.perf_counter() - begin

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(send, events))
    assert all(status == 200 for status, _ in results)
    assert max(elapsed for _, elapsed in results) < 3.0
    tasks = daemon.wait_all_final(10)
    assert all(t["status"] == "COMPLETED" for t in tasks), tasks
    assert sorted(daemon.conversions) == sorted(image(n) for n in range(10))
    assert {t["source"] for t in tasks} == {image(n) for n in range(10)}


def test_sigkill_during_conversions_loses_nothing(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld(FAKE_CONVERTER_DELAY="1.0").start()
    for n in range(6):
        assert daemon.webhook(push_event(image(n))).status_code == 200
    until(lambda: any(t["status"] == "PROCESSING" for t in daemon.tasks()), 10, "a running conversion")
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    daemon.start(FAKE_CONVERTER_DELAY="0.05")
    tasks = daemon.wait_all_final(6)
    assert len(tasks) == 6 and all(t["status"] == "COMPLETED" for t in tasks), tasks
    assert sorted(daemon.conversions) == sorted(image(n) for n in range(6))


def two_nodes(tmp_path: Path, delay: str) -> tuple[Acceld, Acceld]:
    """Two acceld processes sharing one work_dir (one task database), each with a node id of its own."""
    config = base_config(tmp_path, task_lease=1.5)
    nodes = []
    for name in ("node-a", "node-b"):
        root = tmp_path / name
        root.mkdir()
        server = {**config["server"], "port": free_port(), "node": name}
        nodes.append(Acceld(root, {**config, "server": server}, {"FAKE_CONVERTER_DELAY": delay}))
    return nodes[0], nodes[1]


def test_a_killed_node_loses_its_tasks_to_the_other(tmp_path: Path) -> None:
    a, b = two_nodes(tmp_path, delay="1.0")
    try:
        a.start()
        b.start()
        for n in range(6):
            assert a.webhook(push_event(image(n))).status_code == 200
        running = until(
            lambda: [t["id"] for t in b.tasks() if t["status"] == "PROCESSING" and t["node"] == "node-a"],
            10,
            "a conversion running on node-a",
        )
        a.signal(signal.SIGKILL)
        a.wait(10)
        tasks = b.wait_all_final(6, timeout=60)
        assert all(t["status"] == "COMPLETED" for t in tasks), tasks
        taken = {t["id"]: t["node"] for t in tasks if t["id"] in running}
        assert set(taken.values()) == {"node-b"}, taken
        assert set(b.conversions) == {image(n) for n in range(6)}
    finally:
        a.stop()
        b.stop()


def test_cancel_from_another_node_stops_the_conversion(tmp_path: Path) -> None:
    a, b = two_nodes(tmp_path, delay="60")
    try:
        a.start()
        b.start()
        task_id = a.webhook(push_event(image(0))).headers["x-accel-tasks"]
        task = until(
            lambda: next((t for t in a.tasks() if t["status"] == "PROCESSING"), None), 10, "a running task"
        )
        other = b if task["node"] == "node-a" else a
        with other.client() as client:
            response = client.post(
                f"/api/v1/conversions/{task_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}
            )
        assert response.status_code == 200, response.text
        # The running node reads the request at its next heartbeat (a third of the 1.5 s lease).
        done = until(
            lambda: next(t for t in other.tasks() if t["id"] == task_id)["status"] == "CANCELED", 10, "cancel"
        )
        assert done
        assert a.conversions == []
    finally:
        a.stop()
        b.stop()


def test_sigterm_lets_running_conversion_finish(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld(FAKE_CONVERTER_DELAY="1.5").start()
    task_id = daemon.webhook(push_event(image(0))).headers["x-accel-tasks"]
    until(lambda: daemon.tasks()[0]["status"] == "PROCESSING", 10, "conversion start")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    row = sqlite3.connect(daemon.db).execute("SELECT status FROM tasks WHERE id=?", (task_id,)).fetchone()
    assert row == ("COMPLETED",)
    assert daemon.conversions == [image(0)]
    assert "acceld stopped" in daemon.log_text()


def test_sigterm_after_grace_leaves_task_pending(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld(FAKE_CONVERTER_DELAY="60")
    daemon.grace = 0.3
    daemon.start()
    task_id = daemon.webhook(push_event(image(0))).headers["x-accel-tasks"]
    until(lambda: daemon.tasks()[0]["status"] == "PROCESSING", 10, "conversion start")
    daemon.signal(signal.SIGINT)
    assert daemon.wait(20) == 0
    row = sqlite3.connect(daemon.db).execute("SELECT status FROM tasks WHERE id=?", (task_id,)).fetchone()
    assert row == ("PENDING",)
    daemon.start(FAKE_CONVERTER_DELAY="0")
    [task] = daemon.wait_all_final(1)
    assert task["status"] == "COMPLETED" and daemon.conversions == [image(0)]


def test_unix_socket_and_accelctl(
    make_acceld: Callable[..., Acceld], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "run" / "acceld.sock"
    config = base_config(tmp_path, uds=str(sock), api_token="")
    daemon = make_acceld(config).start()
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    addr = f"unix://{sock}"
    # Empty api_token: unix-socket clients may read tasks.
    assert accelctl.main(["task", "create", "--addr", addr, "--auth", SECRET, "--sync", image(3)]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert accelctl.main(["task", "list", "--addr", addr, "--output", "json"]) == 0
    [task] = json.loads(capsys.readouterr().out)
    assert task["source"] == image(3) and task["status"] == "COMPLETED"
    assert accelctl.main(["task", "show", "--addr", addr, task["id"]]) == 0
    assert task["id"] in capsys.readouterr().out
    assert accelctl.main(["task", "cancel", "--addr", addr, task["id"]]) == 1
    assert "ERR_CONFLICT" in capsys.readouterr().err
    assert accelctl.main(["task", "create", "--addr", addr, "--auth", "nope", image(4)]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    daemon.stop()
    assert not sock.exists()
    assert accelctl.main(["task", "list", "--addr", addr]) == accelctl.EXIT_UNREACHABLE
    assert "cannot reach acceld" in capsys.readouterr().err


def test_accelctl_over_tcp_with_token(
    make_acceld: Callable[..., Acceld], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = make_acceld(FAKE_CONVERTER_DELAY="30")
    daemon.grace = 0.5  # the retried task is still converting at teardown
    daemon.start()
    addr = daemon.addr
    assert accelctl.main(["task", "create", "--addr", addr, "--auth", SECRET, image(1)]) == 0
    first = capsys.readouterr().out.strip()
    assert accelctl.main(["task", "create", "--addr", addr, "--auth", SECRET, image(2)]) == 0
    second = capsys.readouterr().out.strip()
    assert accelctl.main(["task", "list", "--addr", addr]) == 1
    assert "--token" in capsys.readouterr().err
    until(lambda: any(t["status"] == "PROCESSING" for t in daemon.tasks()), 10, "conversion start")
    os.environ["ACCELCTL_TOKEN"] = TOKEN
    try:
        assert accelctl.main(["task", "cancel", "--addr", addr, first]) == 0
        assert accelctl.main(["task", "cancel", "--addr", addr, second]) == 0
        until(lambda: all(t["status"] == "CANCELED" for t in daemon.tasks()), 10, "cancellation")
        capsys.readouterr()
        assert accelctl.main(["task", "list", "--addr", addr]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["ID", "CREATED", "STATUS", "ATTEMPTS", "SOURCE", "REASON"]
        assert len(table) == 3 and all("CANCELED" in line for line in table[1:])
        assert accelctl.main(["task", "retry", "--addr", addr, first, "--output", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "PENDING"
    finally:
        del os.environ["ACCELCTL_TOKEN"]


def test_logs_are_logfmt_with_task_ids(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld().start()
    task_id = daemon.webhook(push_event(image(5)), auth=SECRET).headers["x-accel-tasks"]
    daemon.wait_all_final(1)
    daemon.webhook(push_event(image(5)), auth="Bearer not-the-secret")
    daemon.stop()
    lines = daemon.log_text().splitlines()
    assert lines and all(line.startswith("time=") and " level=" in line and " msg=" in line for line in lines)
    finished = [line for line in lines if 'msg="task finished"' in line]
    assert finished and f"task={task_id}" in finished[0] and f"source={image(5)}" in finished[0]
    assert "not-the-secret" not in daemon.log_text() and SECRET not in daemon.log_text()


ST = Path(sys.executable).parent / "st"


@pytest.mark.skipif(
    not ST.exists(), reason="schemathesis is not installed (pip install schemathesis==4.32.5)"
)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(make_acceld: Callable[..., Acceld]) -> None:
    """schemathesis (default checks) against the OpenAPI spec the daemon serves."""
    daemon = make_acceld().start()
    url = f"http://{daemon.addr}/openapi.json"
    command = [
        str(ST),
        "run",
        url,
        "--max-examples",
        "40",
        "--seed",
        "1",
        "-H",
        f"Authorization: Bearer {TOKEN}",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "status=500" not in daemon.log_text()


# Codes upstream's API answers with; a malformed request must get one of them, never ERR_INTERNAL.
CLIENT_ERROR_CODES = {"ERR_ILLEGAL_PARAMETER", "ERR_UNAUTHORIZED", "ERR_UNSUPPORTED_MEDIA_TYPE"}
_PUSH_TEXT = json.dumps(push_event(image(0)))


def _hostile_bodies() -> dict[str, bytes]:
    nest = 200_000  # 800 KB of brackets: under the 1 MiB limit, far past the JSON decoder's recursion
    return {
        "deep_list": b"[" * nest + b"]" * nest,
        "deep_object": b'{"a":' * 150_000 + b"1" + b"}" * 150_000,
        "deep_in_a_field": _PUSH_TEXT[:-1].encode() + b', "x": ' + b"[" * 9000 + b"]" * 9000 + b"}",
        "unclosed_nesting": b"[" * nest,
        "huge_string_as_integer": _PUSH_TEXT.replace(
            '"occur_at": ', '"occur_at": "' + "\\u0041" * 150_000 + '", "x": '
        ).encode(),
        "huge_resource_url": b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": "'
        + b"h" * 900_000
        + b'"}]}}',
        "huge_number": b'{"type": "PUSH_ARTIFACT", "occur_at": ' + b"9" * 100_000 + b"}",
        "utf16_bom": _PUSH_TEXT.encode("utf-16"),
        "utf16le_no_bom": _PUSH_TEXT.encode("utf-16-le"),
        "utf16be_no_bom": _PUSH_TEXT.encode("utf-16-be"),
        "utf32": _PUSH_TEXT.encode("utf-32"),
        "utf8_bom": b"\xef\xbb\xbf" + _PUSH_TEXT.encode(),
        "invalid_utf8": _PUSH_TEXT.replace("admin", "ad\xffmin").encode("latin-1"),
        "overlong_utf8": _PUSH_TEXT.encode().replace(b"admin", b"ad\xc0\xafmin"),
        "raw_nul": _PUSH_TEXT.encode().replace(b"admin", b"ad\x00min"),
        "nul_only": b"\x00" * 1000,
        "lone_high_surrogate": _PUSH_TEXT.replace("admin", "\\ud800").encode(),
        "lone_low_surrogate_key": _PUSH_TEXT.replace('"operator"', '"\\udc00"').encode(),
        "surrogate_in_resource_url": _PUSH_TEXT.replace(HOST, HOST + "\\udfff").encode(),
    }


@pytest.mark.parametrize("content_type", ["application/json", "application/cloudevents+json"])
def test_hostile_bodies_get_a_4xx_json_error(make_acceld: Callable[..., Acceld], content_type: str) -> None:
    """Beyond schemathesis's defaults: deep nesting, huge strings and odd encodings, all malformed."""
    daemon = make_acceld().start()
    headers = {"Authorization": SECRET, "Content-Type": content_type}
    with daemon.client() as client:
        for name, body in _hostile_bodies().items():
            assert len(body) < 1024 * 1024, name
            response = client.post("/api/v1/conversions", content=body, headers=headers)
            assert response.status_code == 400, (name, response.status_code, response.text[:300])
            error = response.json()
            assert set(error) == {"code", "message"} and error["code"] == "ERR_ILLEGAL_PARAMETER", name
        assert client.get("/api/v1/health").status_code == 200
    assert daemon.tasks() == []
    assert "status=500" not in daemon.log_text() and "Logging error" not in daemon.log_text()


def test_generated_hostile_requests_never_get_5xx(make_acceld: Callable[..., Acceld]) -> None:
    """Hypothesis mixes a valid webhook with hostile parts and sends each result to the real daemon."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    daemon = make_acceld().start()
    control = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from("\x7f\u2028\ufeff\ud800")
    texts = st.text(control | st.characters(), max_size=50) | st.builds(
        lambda c, n: c * n, st.sampled_from('a\x00\x1b\\"é'), st.integers(1, 300_000)
    )

    def nested(depth: int, opener: str) -> str:
        closer = {"[": "]", '{"k":': "}"}[opener]
        return opener * depth + ("1" if opener != "[" else "") + closer * depth

    values = (
        texts.map(lambda t: json.dumps(t, ensure_ascii=True))
        | st.builds(nested, st.integers(1, 150_000), st.sampled_from(["[", '{"k":']))
        | st.sampled_from(["null", "true", "1e999999", "-0", "NaN", '"\\ud800"', '"\\u0000"', "9" * 5000])
    )
    fields = st.sampled_from(["type", "operator", "occur_at", "event_data", "resource_url", "tag", "digest"])
    encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"])

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(field=fields, value=values, encoding=encodings, cut=st.integers(0, 40), ctype=st.booleans())
    def check(field: str, value: str, encoding: str, cut: int, ctype: bool) -> None:
        document = _PUSH_TEXT
        if field in ("resource_url", "tag", "digest"):
            key = f'"{field}": '
            start = document.index(key) + len(key)
            end = document.index('"', start + 1) + 1
            document = document[:start] + value + document[end:]
        else:
            document = json.dumps({**json.loads(document), field: None})
            document = document.replace(f'"{field}": null', f'"{field}": {value}')
        body = document.encode(encoding, errors="surrogatepass")[: len(document) * 4 - cut]
        if len(body) > 1024 * 1024:
            return
        headers = {"Authorization": SECRET}
        if ctype:
            headers["Content-Type"] = "application/json"
        response = client.post("/api/v1/conversions", content=body, headers=headers)
        assert response.status_code < 500, (field, value[:80], encoding, response.text[:300])
        if response.status_code >= 400:
            error = response.json()
            assert set(error) == {"code", "message"} and error["code"] in CLIENT_ERROR_CODES

    with daemon.client(timeout=30) as client:
        check()
        assert client.get("/api/v1/health").status_code == 200
    assert "status=500" not in daemon.log_text() and "Logging error" not in daemon.log_text()


def many_resources(sources: list[str]) -> dict[str, Any]:
    payload = push_event(sources[0])
    payload["event_data"]["resources"] = [
        {"digest": digest_of(s), "tag": s.rsplit(":", 1)[1], "resource_url": s} for s in sources
    ]
    return payload


def count_tasks(daemon: Acceld) -> int:
    with sqlite3.connect(daemon.db) as db:
        return int(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])


def test_large_webhook_answers_with_ids_and_redelivery_adds_no_task(
    make_acceld: Callable[..., Acceld], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = make_acceld(FAKE_CONVERTER_DELAY="60")
    daemon.grace = 0.3
    daemon.start()
    payload = many_resources([image(n) for n in range(1000)])
    with daemon.client(timeout=30) as client:
        begin = time.perf_counter()
        first = client.post("/api/v1/conversions", json=payload, headers={"Authorization": SECRET})
        elapsed_1000 = time.perf_counter() - begin
        assert first.status_code == 200, first.text
        ids = first.headers["x-accel-tasks"].split(",")
        assert len(set(ids)) == 1000 and count_tasks(daemon) == 1000
        until(lambda: any(t["status"] == "PROCESSING" for t in daemon.tasks()), 10, "a running task")
        # Harbor redelivers the same event: queued and running sources absorb it.
        again = client.post("/api/v1/conversions", json=payload, headers={"Authorization": SECRET})
        assert again.status_code == 200 and again.headers["x-accel-tasks"].split(",") == ids
        assert count_tasks(daemon) == 1000

        # 5,000 resources at once: five such webhooks (the per-webhook limit is 1,000) concurrently.
        def send(batch: int) -> tuple[int, int, float]:
            sources = [image(n) for n in range(1000 * batch, 1000 * (batch + 1))]
            start = time.perf_counter()
            response = client.post(
                "/api/v1/conversions", json=many_resources(sources), headers={"Authorization": SECRET}
            )
            ids = response.headers.get("x-accel-tasks", "").split(",")
            return response.status_code, len(set(ids)), time.perf_counter() - start

        begin = time.perf_counter()
        with ThreadPoolExecutor(5) as pool:
            results = list(pool.map(send, range(1, 6)))
        elapsed_5000 = time.perf_counter() - begin
    assert [(status, n) for status, n, _ in results] == [(200, 1000)] * 5
    assert count_tasks(daemon) == 6000
    with capsys.disabled():
        print(
            f"\n1,000-resource webhook answered in {elapsed_1000:.2f} s; 5 x 1,000 concurrently in "
            f"{elapsed_5000:.2f} s (slowest answer {max(r[2] for r in results):.2f} s)"
        )
    assert elapsed_1000 < 3.0 and max(r[2] for r in results) < 3.0


def test_stalled_store_answers_503_and_saves_nothing(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld().start()
    blocker = sqlite3.connect(daemon.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the daemon's commit waits behind it
    try:
        begin = time.perf_counter()
        stalled = daemon.webhook(push_event(image(0)))
        assert time.perf_counter() - begin < 3.0
        assert stalled.status_code == 503 and stalled.json()["code"] == "ERR_UNAVAILABLE"
        assert "x-accel-tasks" not in stalled.headers
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    until(lambda: "tasks withdrawn before commit" in daemon.log_text(), 30, "the withdrawn write")
    assert count_tasks(daemon) == 0  # the answer said "retry": nothing was saved
    retried = daemon.webhook(push_event(image(0)))
    assert retried.status_code == 200
    [task] = daemon.wait_all_final(1)
    assert task["id"] == retried.headers["x-accel-tasks"] and daemon.conversions == [image(0)]


def test_log_lines_hold_no_raw_control_bytes(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld().start()
    controls = bytes([*range(0x20), 0x7F])
    path = "/x" + "".join(f"%{b:02x}" for b in controls) + "%1b%5b31mRED%ff%c2%85"
    with daemon.client() as client:
        response = client.get(path)  # unauthenticated, unknown route: still logged
        assert response.status_code == 404
        client.post(f"{path}?sync=true", content=b"\x1b[2J", headers={"Authorization": SECRET})
    daemon.stop()
    raw = daemon.log_file.read_bytes()
    lines = raw.split(b"\n")
    logged = [line for line in lines if b"msg=request" in line and b"RED" in line]
    assert len(logged) == 2, raw[-2000:]
    for line in lines:
        assert not any(b in controls for b in line), line
        line.decode("utf-8")  # valid UTF-8: grep does not treat the log as binary
    assert b"\\x00\\x01\\x02" in logged[0] and b"\\x1b[31mRED" in logged[0] and b"\\x7f" in logged[0]


def test_webhook_content_type_must_be_json(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld().start()
    body = json.dumps(push_event(image(0))).encode()
    with daemon.client() as client:

        def post(content_type: str | None) -> httpx.Response:
            headers = {"Authorization": SECRET}
            if content_type is not None:
                headers["Content-Type"] = content_type
            return client.post("/api/v1/conversions", content=body, headers=headers)

        for refused in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            response = post(refused)
            assert response.status_code == 415, (refused, response.text)
            assert response.json()["code"] == "ERR_UNSUPPORTED_MEDIA_TYPE"
        assert daemon.tasks() == []
        for accepted in (
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.harbor+json",
        ):
            assert post(accepted).status_code == 200, accepted
        assert post(None).status_code == 200  # no Content-Type at all: read as JSON (README)


def _read_response(sock: Any) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: (head, body). Fails if the peer closes first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data[:300]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-body: {head[:300]!r}"
        body += chunk
    return head, body


def test_oversized_body_gets_413_on_a_reusable_connection(make_acceld: Callable[..., Acceld]) -> None:
    import socket

    daemon = make_acceld().start()
    host, port = daemon.addr.split(":")
    body = b'{"type": "PUSH_ARTIFACT", "x": "' + b"a" * (1200 * 1024) + b'"}'
    request = (
        f"POST /api/v1/conversions HTTP/1.1\r\nHost: acceld\r\nAuthorization: {SECRET}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    health = b"GET /api/v1/health HTTP/1.1\r\nHost: acceld\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(health)  # the connection is in use before the big request, as Harbor's pool is
        assert _read_response(sock)[0].startswith(b"HTTP/1.1 200")
        sock.sendall(request[: len(request) // 3])  # the 413 may come before the rest is sent
        sock.sendall(request[len(request) // 3 :])
        head, answer = _read_response(sock)  # a reset here raises ConnectionResetError
        assert head.startswith(b"HTTP/1.1 413") and b"connection: close" not in head.lower()
        assert json.loads(answer)["code"] == "ERR_ILLEGAL_PARAMETER"
        sock.sendall(health)  # the same connection still serves the next request
        assert _read_response(sock)[0].startswith(b"HTTP/1.1 200")


def test_tasks_db_is_private_and_open_endpoints_are_documented(make_acceld: Callable[..., Acceld]) -> None:
    daemon = make_acceld().start()
    assert daemon.webhook(push_event(image(0))).status_code == 200
    daemon.wait_all_final(1)
    for path in daemon.db.parent.glob("tasks.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # With server.api_token set, the task API needs it; /metrics, /docs and /openapi.json are served
    # without, as Prometheus scrapers expect (README, "HTTP API"). None of them carries a secret.
    with daemon.client() as client:
        assert client.get("/api/v1/conversions").status_code == 401
        for path in ("/metrics", "/docs", "/openapi.json"):
            response = client.get(path)
            assert response.status_code == 200, path
            assert TOKEN not in response.text and SECRET not in response.text
