"""``accelctl task ...``: talk to a running acceld (create, list, show, cancel, retry).

``register(subparsers)`` adds the ``task`` command to an argparse parser; every subcommand stores its
handler in ``args.func`` (call ``args.func(args)``; it returns the exit code). The plain functions and
:class:`TaskClient` can be used without argparse.

Exit codes (``accel.errors.EXIT_CODES``): 0 success, 1 the daemon refused or the conversion failed, 3 the
daemon is unreachable. Errors are one line on stderr, ``accelctl: error: ...``, as for ``convert``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from accel.errors import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE

if TYPE_CHECKING:
    import httpx

DEFAULT_ADDR = "localhost:2077"
EXIT_REFUSED = EXIT_FAILED
_CUT = 80


class ClientError(Exception):
    """A request failed; ``exit_code`` tells the CLI how."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class TaskClient:
    """HTTP client for acceld; ``addr`` is ``host:port``, ``http(s)://host:port`` or ``unix:///path``."""

    def __init__(
        self, addr: str = DEFAULT_ADDR, *, auth: str = "", token: str = "", timeout: float = 3600.0
    ) -> None:
        # Imported here: ``accelctl convert`` builds this module's parser but never talks to acceld.
        import httpx

        self.addr = addr
        self._auth = auth
        self._token = token
        if addr.startswith("unix://"):
            path = addr.removeprefix("unix://")
            transport = httpx.HTTPTransport(uds=path)
            self._http = httpx.Client(transport=transport, base_url="http://acceld", timeout=timeout)
        else:
            base = addr if addr.startswith(("http://", "https://")) else f"http://{addr}"
            self._http = httpx.Client(base_url=base, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, header: str = "", **kwargs: Any) -> httpx.Response:
        import httpx

        headers = {"Authorization": header} if header else {}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise ClientError(
                f"acceld at {self.addr} did not answer in time ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach acceld at {self.addr}: {exc}", EXIT_UNREACHABLE) from None
        if response.status_code >= 400:
            raise ClientError(_describe_error(response))
        return response

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        header = f"Bearer {self._token}" if self._token else ""
        return self._request(method, path, header=header, **kwargs).json()

    def create(self, source: str, *, sync: bool = False) -> list[str]:
        """Submit ``source`` as a Harbor PUSH_ARTIFACT event; returns the ids of the tasks it maps to."""
        header = self._auth or (f"Bearer {self._token}" if self._token else "")
        response = self._request(
            "POST",
            "/api/v1/conversions",
            header=header,
            params={"sync": "true" if sync else "false"},
            json=push_payload(source),
        )
        ids = response.headers.get("x-accel-tasks", "")
        return [i for i in ids.split(",") if i]

    def list_tasks(self) -> list[dict[str, Any]]:
        return list(self._api("GET", "/api/v1/conversions"))

    def show(self, task_id: str) -> dict[str, Any]:
        return dict(self._api("GET", f"/api/v1/conversions/{task_id}"))

    def cancel(self, task_id: str) -> dict[str, Any]:
        return dict(self._api("POST", f"/api/v1/conversions/{task_id}/cancel"))

    def retry(self, task_id: str) -> dict[str, Any]:
        return dict(self._api("POST", f"/api/v1/conversions/{task_id}/retry"))


def _describe_error(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = f"{body['code']}: {body['message']}"
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200] or response.reason_phrase
    hint = ""
    if response.status_code == 401:
        hint = " (check --auth / ACCELCTL_AUTH for task create, --token / ACCELCTL_TOKEN for the task API)"
    elif response.status_code == 403:
        hint = " (set server.api_token in acceld's config and pass --token)"
    return f"acceld refused the request (HTTP {response.status_code}): {detail}{hint}"


def push_payload(source: str) -> dict[str, Any]:
    """A Harbor Default-format PUSH_ARTIFACT event for ``source`` (``host/repo[:tag][@digest]``)."""
    name, _, digest = source.partition("@")
    _, _, path = name.partition("/")
    repo, tag = path, ""
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = path.rpartition(":")
    namespace, _, short = repo.rpartition("/")
    resource: dict[str, Any] = {"tag": tag or digest, "resource_url": source}
    if digest:
        resource["digest"] = digest
    return {
        "type": "PUSH_ARTIFACT",
        "occur_at": int(time.time()),
        "operator": "accelctl",
        "event_data": {
            "resources": [resource],
            "repository": {"name": short, "namespace": namespace, "repo_full_name": repo, "repo_type": ""},
        },
    }


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _CUT else text[: _CUT - 3] + "..."


def format_table(tasks: Sequence[dict[str, Any]]) -> str:
    """Columns as upstream's accelctl (ID, CREATED, STATUS, SOURCE, REASON) plus ATTEMPTS; long text cut."""
    header = ["ID", "CREATED", "STATUS", "ATTEMPTS", "SOURCE", "REASON"]
    rows = [
        [
            str(t.get("id", "")),
            str(t.get("created", "")),
            str(t.get("status", "")),
            str(t.get("attempts", "")),
            _cut(str(t.get("source", ""))),
            _cut(str(t.get("reason", ""))),
        ]
        for t in tasks
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)


def format_task(task: dict[str, Any]) -> str:
    width = max(len(k) for k in task)
    return "\n".join(
        f"{key.upper().ljust(width)}  {'' if value is None else value}" for key, value in task.items()
    )


def _client(args: argparse.Namespace) -> TaskClient:
    return TaskClient(args.addr, auth=args.auth or "", token=args.token or "")


def _run(args: argparse.Namespace, action: Any, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with _client(args) as client:
            text = action(client)
    except ClientError as exc:
        print(f"accelctl: error: {exc.message}", file=err)
        return exc.exit_code
    if text:
        print(text, file=out)
    return EXIT_OK


def cmd_create(args: argparse.Namespace) -> int:
    def action(client: TaskClient) -> str:
        ids = client.create(args.source, sync=args.sync)
        if not ids:
            return "ignored: acceld does not convert this reference (see its log)"
        if args.sync:
            return "\n".join(format_task(client.show(i)) if args.token else f"{i} COMPLETED" for i in ids)
        return "\n".join(ids)

    return _run(args, action)


def cmd_list(args: argparse.Namespace) -> int:
    def action(client: TaskClient) -> str:
        tasks = client.list_tasks()
        return json.dumps(tasks, indent=2) if args.output == "json" else format_table(tasks)

    return _run(args, action)


def _one(method: str) -> Any:
    def command(args: argparse.Namespace) -> int:
        def action(client: TaskClient) -> str:
            task = getattr(client, method)(args.id)
            return json.dumps(task, indent=2) if args.output == "json" else format_task(task)

        return _run(args, action)

    return command


cmd_show, cmd_cancel, cmd_retry = _one("show"), _one("cancel"), _one("retry")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``task`` (create, list/ls, show, cancel, retry) to an argparse subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--addr",
        default=os.environ.get("ACCELCTL_ADDR", DEFAULT_ADDR),
        help="acceld address: host:port, http(s)://host:port or unix:///path (default %(default)s)",
    )
    common.add_argument(
        "--auth",
        default=os.environ.get("ACCELCTL_AUTH", ""),
        help="webhook Authorization header value for task create (env ACCELCTL_AUTH)",
    )
    common.add_argument(
        "--token",
        default=os.environ.get("ACCELCTL_TOKEN", ""),
        help="API token (server.api_token) for reading and managing tasks (env ACCELCTL_TOKEN)",
    )
    task: argparse.ArgumentParser = subparsers.add_parser(
        "task", help="manage conversion tasks on a running acceld"
    )
    sub = task.add_subparsers(dest="task_command", required=True)

    create = sub.add_parser("create", parents=[common], help="queue a conversion of SOURCE")
    create.add_argument("--sync", action="store_true", help="wait until the conversion has finished")
    create.add_argument("source", help="image reference host/repository:tag")
    create.set_defaults(func=cmd_create)

    for name, aliases in (("list", ["ls"]),):
        lister = sub.add_parser(name, aliases=aliases, parents=[common], help="list tasks, newest first")
        lister.add_argument("--output", "-o", choices=["table", "json"], default="table")
        lister.set_defaults(func=cmd_list)

    for name, func, text in (
        ("show", cmd_show, "show one task"),
        ("cancel", cmd_cancel, "cancel a PENDING or PROCESSING task"),
        ("retry", cmd_retry, "queue a FAILED or CANCELED task again"),
    ):
        parser = sub.add_parser(name, parents=[common], help=text)
        parser.add_argument("id", help="task id")
        parser.add_argument("--output", "-o", choices=["text", "json"], default="text")
        parser.set_defaults(func=func)
    return task


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry for tests and until accelctl wires :func:`register` in."""
    parser = argparse.ArgumentParser(prog="accelctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
