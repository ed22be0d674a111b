"""The accelctl command's process: imports it skips, and an exit that skips the interpreter's teardown but
not the output."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _python(script: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_end_process_flushes_output_and_logs_and_keeps_the_exit_code() -> None:
    proc = _python(
        """
        import logging, sys
        from accel.cli.process import end_process
        sys.stdout = open(1, "w", buffering=1 << 20, closefd=False)  # buffered even under PYTHONUNBUFFERED
        sys.stderr = open(2, "w", buffering=1 << 20, closefd=False)
        logging.basicConfig(stream=sys.stderr, format="%(message)s")
        sys.stdout.write("x" * 100_000)  # all held in the buffer: only the flush before exit writes it
        logging.getLogger("t").warning("logged")
        end_process(3)
        """
    )
    assert proc.returncode == 3
    assert proc.stdout == "x" * 100_000
    assert proc.stderr == "logged\n"


def test_end_process_fails_a_run_whose_output_could_not_be_written() -> None:
    # Its stdout is a pipe nobody reads, as in `accelctl task list | head -0` after head has exited.
    proc = _python(
        """
        import os, sys
        from accel.cli.process import end_process
        read_end, write_end = os.pipe()
        os.close(read_end)
        os.dup2(write_end, 1)
        sys.stdout = open(1, "w", buffering=1 << 16, closefd=False)  # buffered even under PYTHONUNBUFFERED
        print("lost")
        end_process(0)
        """
    )
    assert proc.returncode == 120


def test_end_process_keeps_a_failure_code_when_output_also_fails() -> None:
    proc = _python(
        """
        import os, sys
        from accel.cli.process import end_process
        read_end, write_end = os.pipe()
        os.close(read_end)
        os.dup2(write_end, 1)
        sys.stdout = open(1, "w", buffering=1 << 16, closefd=False)  # buffered even under PYTHONUNBUFFERED
        print("lost")
        end_process(4)
        """
    )
    assert proc.returncode == 4


def test_the_http_stack_works_without_the_imports_the_command_skips() -> None:
    proc = _python(
        """
        import json, sys
        from accel.cli.process import skip_unused_imports
        skip_unused_imports()
        import httpx
        client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(204)))
        status = client.get("http://registry.invalid/v2/").status_code
        loaded = [name for name in ("trio", "httpx._main", "click", "pygments") if sys.modules.get(name)]
        print(json.dumps({"status": status, "loaded": loaded}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"status": 204, "loaded": []}


def test_modules_already_imported_are_left_alone() -> None:
    proc = _python(
        """
        import sys, types
        sys.modules["trio"] = types.ModuleType("trio")
        from accel.cli.process import skip_unused_imports
        skip_unused_imports()
        print(type(sys.modules["trio"]).__name__, sys.modules["httpx._main"])
        """
    )
    assert proc.stdout.split() == ["module", "None"]
