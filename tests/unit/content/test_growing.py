"""GrowingFile: a reader that keeps pace with a writer thread and never ends before the writer did."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from accel.content import GrowingFile
from accel.errors import CanceledError, DigestMismatchError


def _pair(tmp_path: Path) -> tuple[int, GrowingFile]:
    path = tmp_path / "blob"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    return fd, GrowingFile(os.open(path, os.O_RDONLY))


def test_reads_wait_for_the_writer_and_end_only_when_it_finished(tmp_path: Path) -> None:
    out, reader = _pair(tmp_path)
    parts = [os.urandom(1000) for _ in range(5)]
    wrote_one = threading.Event()
    go_on = threading.Event()

    def write() -> None:
        size = 0
        for i, part in enumerate(parts):
            size += os.write(out, part)
            reader.advance_to(size)
            if i == 0:
                wrote_one.set()
                go_on.wait(10)
        reader.finish()

    writer = threading.Thread(target=write)
    writer.start()
    assert wrote_one.wait(10)
    assert reader.read(1000) == parts[0]  # available now, while the writer is paused
    go_on.set()
    assert reader.read() == b"".join(parts[1:])
    writer.join(10)
    reader.close()
    os.close(out)


def test_a_restart_rewrites_what_the_reader_already_has(tmp_path: Path) -> None:
    out, reader = _pair(tmp_path)
    data = os.urandom(4000)
    os.write(out, data[:3000])
    reader.advance_to(3000)
    assert reader.read(2000) == data[:2000]
    os.ftruncate(out, 0)
    reader.advance_to(0)  # the writer starts over with the same bytes
    os.pwrite(out, data, 0)
    reader.advance_to(len(data))
    reader.finish()
    assert reader.read() == data[2000:]
    reader.close()
    os.close(out)


def test_the_writers_error_reaches_the_reader_even_after_the_last_byte(tmp_path: Path) -> None:
    out, reader = _pair(tmp_path)
    os.write(out, b"complete but wrong")
    reader.advance_to(18)
    reader.finish(DigestMismatchError("blob: digest mismatch"))
    with pytest.raises(DigestMismatchError):
        reader.read()
    with pytest.raises(DigestMismatchError):
        reader.close()
    os.close(out)


def test_close_waits_for_verification_when_the_reader_stopped_early(tmp_path: Path) -> None:
    out, reader = _pair(tmp_path)
    os.write(out, b"x" * 100)
    reader.advance_to(100)
    assert reader.read(10) == b"x" * 10

    def fail_later() -> None:
        reader.finish(DigestMismatchError("blob: digest mismatch"))

    threading.Timer(0.05, fail_later).start()
    with pytest.raises(DigestMismatchError):
        reader.close()
    os.close(out)


def test_leaving_with_an_error_abandons_the_blob(tmp_path: Path) -> None:
    out, reader = _pair(tmp_path)
    with pytest.raises(RuntimeError), reader:
        raise RuntimeError("the driver failed")
    assert reader.abandoned and reader.closed
    with pytest.raises(ValueError):
        reader.read(1)
    os.close(out)


def test_an_abandoned_reader_stops_waiting(tmp_path: Path) -> None:
    out, reader = _pair(tmp_path)
    threading.Timer(0.05, reader.abandon).start()
    with pytest.raises(CanceledError):
        reader.read(10)
    reader.close()
    os.close(out)
