"""What a short-lived command process does that a library caller of the same code must not: skip imports
nothing in the command uses, and end without the interpreter's teardown. Only the console entry points call
these; tests and embedders calling ``main()`` get an ordinary interpreter."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

# httpcore imports trio whenever it is installed (selenium brings it into a development venv) only to ask
# whether it runs under trio, and httpx imports its own command-line client (click, pygments, rich's syntax
# highlighting). A command that uses neither waits ~0.12 s for them (measured, `python -X importtime`).
_UNUSED_BY_COMMANDS = ("trio", "httpx._main")

# What CPython itself exits with when it cannot flush stdout at exit (a closed pipe, a full disk).
_EXIT_FLUSH_FAILED = 120


def skip_unused_imports() -> None:
    """Make later imports of the modules above fail as if they were not installed, which both httpcore and
    httpx handle. Modules already imported are left alone."""
    for name in _UNUSED_BY_COMMANDS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not installed", per the import system


def end_process(code: int) -> NoReturn:
    """Exit with ``code`` once logs and output are flushed, without tearing the interpreter down: freeing
    every module and object one at a time takes ~0.1 s after a conversion (measured between ``main``
    returning and the process ending). Every file and pool a command opens is closed before ``main``
    returns, and this package registers no atexit handlers."""
    logging.shutdown()
    try:
        if sys.stdout is not None:  # None when the process was started with its stdout closed
            sys.stdout.flush()
    except (OSError, ValueError):
        code = code or _EXIT_FLUSH_FAILED
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
    os._exit(code)
