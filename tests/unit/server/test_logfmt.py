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


def test_every_control_character_is_escaped() -> None:
    hostile = "".join(map(chr, [*range(0x20), 0x7F, 0x85, 0x9B, 0x2028, 0x202E, 0x200B, 0xFEFF]))
    hostile += "/x\x1b[31mRED" + b"\xff\xfe".decode("utf-8", "surrogateescape")
    line = LogfmtFormatter().format(_record(hostile, path=hostile, error=ValueError(hostile)))
    assert line.isprintable() and line.isascii()
    line.encode("utf-8")  # no lone surrogate left: the line can be written
    assert "\\x00\\x01" in line and "\\x1b[31mRED" in line and "\\x7f" in line and "\\u202e" in line
    assert "\\udcff\\udcfe" in line and "\\t\\n\\x0b\\x0c\\r" in line


def test_printable_text_is_unchanged() -> None:
    line = LogfmtFormatter().format(_record("ok", reason='naïve "quote" \\ back'))
    assert line.endswith('reason="naïve \\"quote\\" \\\\ back"')
