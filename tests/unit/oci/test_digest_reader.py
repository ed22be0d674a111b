from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from accel.errors import DigestMismatchError
from accel.oci.digest import of_bytes, verifying_reader


def test_reading_to_the_end_verifies() -> None:
    data = os.urandom(3_000_000)
    reader = verifying_reader(io.BytesIO(data), of_bytes(data), len(data))
    assert reader.read(10) == data[:10]
    assert reader.read() == data[10:]
    assert reader.read() == b""


def test_corrupt_stream_raises_at_the_end() -> None:
    data = b"a" * 100_000
    reader = verifying_reader(io.BytesIO(data[:-1] + b"b"), of_bytes(data))
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        reader.read()


def test_size_checks() -> None:
    data = b"abc"
    with pytest.raises(DigestMismatchError, match="longer"):
        verifying_reader(io.BytesIO(data + b"d"), of_bytes(data), 3).read()
    with pytest.raises(DigestMismatchError, match="size mismatch"):
        verifying_reader(io.BytesIO(data), of_bytes(data), 4).read()


def test_works_under_gzip_and_tarfile_streams() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("f")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    blob = gzip.compress(buf.getvalue())
    with tarfile.open(fileobj=verifying_reader(io.BytesIO(blob), of_bytes(blob)), mode="r|gz") as tf:
        names = [m.name for m in tf]
    assert names == ["f"]
    with pytest.raises(DigestMismatchError), verifying_reader(io.BytesIO(blob + b"x"), of_bytes(blob)) as f:
        f.read()
