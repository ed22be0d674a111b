"""The mapped view of a layer's tar: slices, released pages, bounds."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from accel.errors import FormatError
from accel.formats.chunked import MappedTar
from tests.support.layers import payload


def test_released_pages_read_the_same_bytes_again(tmp_path: Path) -> None:
    data = payload(5 * mmap.PAGESIZE + 123, 9)
    path = tmp_path / "tar"
    path.write_bytes(b"pre" + data)
    with path.open("rb") as f:
        mapped = MappedTar(f.fileno(), 3, len(data))
        first = bytes(mapped.slice(100, 3 * mmap.PAGESIZE))
        mapped.release(0, len(data))
        assert bytes(mapped.slice(100, 3 * mmap.PAGESIZE)) == first == data[100 : 100 + 3 * mmap.PAGESIZE]
        mapped.close()


def test_a_slice_past_the_end_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "tar"
    path.write_bytes(b"x" * 100)
    with path.open("rb") as f:
        mapped = MappedTar(f.fileno(), 0, 100)
        assert bytes(mapped.slice(90, 10)) == b"x" * 10
        with pytest.raises(FormatError, match="outside the tar"):
            mapped.slice(95, 10)
        mapped.close()


def test_a_growing_file_is_mapped_further_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "tar"
    path.write_bytes(b"a" * 10)
    with path.open("r+b") as f:
        mapped = MappedTar(f.fileno(), 0, 0, grow=lambda: path.stat().st_size)
        assert bytes(mapped.slice(0, 10)) == b"a" * 10
        f.seek(0, 2)
        f.write(b"b" * 10)
        f.flush()
        assert bytes(mapped.slice(5, 10)) == b"a" * 5 + b"b" * 5
        with pytest.raises(FormatError):
            mapped.slice(15, 10)
        mapped.close()
