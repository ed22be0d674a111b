from __future__ import annotations

import io
import logging

from accel.server.logfmt import LogfmtFormatter, setup_logging


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("accel.tasks", logging.WARNING, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_one_line_with_fields() -> None:
    line = LogfmtFormatter().format(
        _record("task finished", task="abc-1", source="h/r:1", reason='bad "thing"\nnext', empty="")
    )
    assert "\n" not in line
    assert line.startswith("time=") and line.endswith('reason="bad \\"thing\\"\\nnext"')
    fields = line.split(" ", 3)
    assert fields[1] == "level=warn" and fields[2] == 'msg="task'
    assert " task=abc-1 source=h/r:1 " in line and "empty=" not in line


def test_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = LogfmtFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in line


def test_setup_logging_routes_uvicorn() -> None:
    stream = io.StringIO()
    setup_logging("info", stream)
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info("GET / 200")
    logging.getLogger("accel.server").debug("hidden")
    lines = stream.getvalue().splitlines()
    assert lines == [lines[0]] and 'msg="Started server process" logger=uvicorn.error' in lines[0]
