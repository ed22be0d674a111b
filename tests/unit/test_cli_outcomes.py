"""accelctl's documented contract: the README's exit-code table, error lines, logging, byte accounting."""

from __future__ import annotations

import http.server
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from accel.cli import tasks
from accel.cli.logs import demote_http_client_logs
from accel.config import parse_config
from accel.converter.progress import NOT_NEEDED, Counters
from accel.errors import EXIT_CODES, EXIT_FAILED, EXIT_UNREACHABLE, ConfigError
from accel.oci.manifest import Descriptor

README = Path(__file__).parents[2] / "README.md"


def test_readme_exit_code_table_is_the_code_table() -> None:
    text = README.read_text()
    section = text[text.index("### Exit codes") :]
    rows = re.findall(r"^\| `(\d+)` \| (.+?) \|$", section.split("\n\n", 2)[1], re.MULTILINE)
    assert {int(code): meaning for code, meaning in rows} == EXIT_CODES


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"code": "ERR_UNAUTHORIZED", "message": "no token"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_daemon() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_task_errors_read_accelctl_error(refusing_daemon: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert tasks.main(["task", "list", "--addr", refusing_daemon]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("accelctl: error: acceld refused the request (HTTP 401): ERR_UNAUTHORIZED")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
        addr = f"127.0.0.1:{sock.getsockname()[1]}"
        assert tasks.main(["task", "list", "--addr", addr]) == EXIT_UNREACHABLE
    assert capsys.readouterr().err.startswith(f"accelctl: error: cannot reach acceld at {addr}")


@pytest.mark.parametrize(
    ("data", "suggestion"),
    [
        (
            {"provider": {"gcpolicy": {"treshold": "1GB"}}},
            "provider.gcpolicy.treshold: unknown key (did you mean 'threshold'?)",
        ),
        (
            {"provider": {"source": {"h:1": {"insecur": True}}}},
            "provider.source.h:1.insecur: unknown key (did you mean 'insecure'?)",
        ),
        (
            {"converter": {"rules": [{"tagsuffix": "-x"}]}},
            "converter.rules.0.tagsuffix: unknown key (did you mean 'tag_suffix'?)",
        ),
    ],
)
def test_unknown_key_suggests_the_nearest(data: dict[str, dict[str, object]], suggestion: str) -> None:
    converter = {"driver": {"type": "oci"}, **data.pop("converter", {})}
    with pytest.raises(ConfigError) as err:
        parse_config({**data, "converter": converter})
    assert suggestion in err.value.message


def test_unknown_key_far_from_any_has_no_suggestion() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"provider": {"zzzzzz": 1}, "converter": {"driver": {"type": "oci"}}})
    assert err.value.message.endswith("provider.zzzzzz: unknown key")


def test_http_client_request_lines_are_debug(caplog: pytest.LogCaptureFixture) -> None:
    demote_http_client_logs()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        caplog.set_level(logging.INFO)
        client.get("http://registry.test/v2/")
        assert not [r for r in caplog.records if r.name == "httpx"]
        caplog.set_level(logging.DEBUG)
        client.get("http://registry.test/v2/")
    [record] = [r for r in caplog.records if r.name == "httpx"]
    assert record.levelno == logging.DEBUG and "registry.test" in record.getMessage()


class _Recorder:
    def __init__(self) -> None:
        self.totals: dict[str, int | None] = {}
        self.moved: dict[str, int] = {}
        self.skipped: dict[tuple[str, str], int] = {}

    def stage(self, name: str, total: int | None) -> None:
        self.totals[name] = total

    def advance(self, name: str, nbytes: int) -> None:
        self.moved[name] = self.moved.get(name, 0) + nbytes

    def skip(self, name: str, nbytes: int, how: str) -> None:
        self.skipped[name, how] = self.skipped.get((name, how), 0) + nbytes


def test_blob_counts_add_up_to_the_total() -> None:
    layer = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "1" * 64, 1000)
    mounted = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "2" * 64, 300)
    unread = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "3" * 64, 50)
    shown = _Recorder()
    counters = Counters(shown)
    counters.expect("push", [layer, mounted, layer])
    counters.expect("pull", [unread])
    assert shown.totals == {"push": 1300, "pull": 50}, "each digest once, known before any byte moves"

    upload = counters.blob("push", layer)
    for _ in range(2):  # a retried upload sends the blob again
        upload.advance(600)
        upload.advance(400)
    upload.done("uploaded")
    counters.blob("push", mounted).done("mounted")
    counters.finish()

    assert counters.bytes["push"] == shown.moved["push"] == 1000
    assert shown.skipped == {("push", "mounted"): 300, ("pull", NOT_NEEDED): 50}
    assert counters.bytes["pull"] == 0


def test_example_configs_keep_their_work_dir_out_of_the_checkout() -> None:
    from accel.config import load_config

    root = README.parent.resolve()
    examples = sorted((root / "misc" / "config").glob("*.yaml"))
    assert examples
    for path in examples:
        work_dir = load_config(path).provider.work_dir.resolve()
        assert not work_dir.is_relative_to(root), f"{path.name}: work_dir {work_dir} is in the checkout"
