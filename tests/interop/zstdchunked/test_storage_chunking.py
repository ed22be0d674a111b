"""Our containers/storage zstd:chunked chunking against containers/storage's own compressor (Debian's
golang-github-containers-storage-dev): every file's chunk boundaries, sizes, digests and types, and the
file digests, must be the same, so our layers deduplicate chunk by chunk with podman/buildah-built ones."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path
from typing import Any

import pytest

from accel.formats import zstdchunked
from accel.formats.zstdchunked import open_storage_blob
from tests.support.layers import layer_with, payload

pytestmark = pytest.mark.interop

_KEYS = ("type", "name", "size", "digest", "chunkSize", "chunkOffset", "chunkDigest", "chunkType")
# 63 bytes 0xff then 0xde: the rolling sum's low 16 bits are all ones after the last one (worked out by
# hand from the bup sum: 64*63*31 + 255*2080 - 33 = 65535 mod 65536), so a split follows every 64 bytes.
_TRIGGER = b"\xff" * 63 + b"\xde"


def _zero_heavy(size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        run = rnd.choice([1, 63, 64, 65, 700, 1023, 1024, 1025, 4000, 70_000, 300_000])
        out += bytes(run) if rnd.random() < 0.5 else rnd.randbytes(run)
    return bytes(out[:size])


def _real_files(limit: int) -> list[tuple[str, bytes]]:
    """Real binaries and libraries (zero padding, tables, code): the interpreter and its extension modules."""
    paths = [Path(sys.executable).resolve()]
    libpython = Path(str(sysconfig.get_config_var("LIBDIR")), str(sysconfig.get_config_var("LDLIBRARY")))
    paths += [libpython] if libpython.is_file() else []
    spec = importlib.util.find_spec("_asyncio")  # an extension module, next to the others
    if spec is not None and spec.origin is not None:
        paths += sorted(Path(spec.origin).parent.glob("*.so"))
    out: list[tuple[str, bytes]] = []
    total = 0
    for path in paths:
        data = path.read_bytes()[: 4 << 20]
        out.append((f"real/{len(out)}-{path.name}", data))
        total += len(data)
        if total >= limit:
            break
    return out


def _layer(files: list[tuple[str, bytes]]) -> bytes:
    return layer_with([(name, tarfile.REGTYPE, data) for name, data in files])


LAYERS = {
    "random": lambda: _layer(
        [("d/empty", b""), ("d/one", b"x")]
        + [(f"d/r{size}", random.Random(size).randbytes(size)) for size in (100, 5000, 70_000, 300_000)]
        + [("d/big", payload(3 << 20, 1))]
    ),
    "zeros": lambda: _layer(
        [
            ("z/1023", bytes(1023)),
            ("z/1024", bytes(1024)),
            ("z/3m", bytes(3 << 20)),
            ("z/starts-with-hole", bytes(5000) + payload(200_000, 2)),
            ("z/ends-with-hole", payload(200_000, 3) + bytes(5000)),
            ("z/ends-short-zeros", payload(200_000, 4) + bytes(1000)),
            ("z/mixed", _zero_heavy(3 << 20, 5)),
            ("z/mixed2", _zero_heavy(1 << 20, 6)),
        ]
    ),
    "patterns": lambda: _layer(
        [
            ("p/trigger", _TRIGGER),
            ("p/triggers", _TRIGGER * 50 + b"tail"),
            ("p/trigger-then-hole", b"a" + _TRIGGER + bytes(2000) + _TRIGGER),
            ("p/constant", b"\x01" * 200_000),
        ]
    ),
    "real": lambda: _layer(_real_files(12 << 20)),
}


def _chunk_fields(toc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: e[k] for k in _KEYS if e.get(k) not in (None, "", 0)} for e in toc["entries"]]


@pytest.mark.parametrize("case", list(LAYERS))
def test_chunks_match_containers_storage(csref: Path, case: str) -> None:
    tar = LAYERS[case]()
    proc = subprocess.run([str(csref)], input=tar, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    want = _chunk_fields(json.loads(proc.stdout))
    out = io.BytesIO()
    zstdchunked.build(io.BytesIO(tar), out)
    got = _chunk_fields(open_storage_blob(out.getvalue()).toc)
    assert sum(1 for e in want if e["type"] == "chunk") > 0
    assert got == want
