"""Member compressors: each call turns some uncompressed bytes into one complete gzip member or zstd frame.

All backends release the GIL while compressing, so members are compressed on worker threads (libdeflate is
called through ctypes, which releases it too).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator, Sequence
from typing import Final, Literal, Protocol

import isal.isal_zlib as _isal
import zlib_ng.zlib_ng as _zng
import zstandard

from accel.errors import FormatError

Buffer = bytes | bytearray | memoryview
Backend = Literal["libdeflate", "zlib-ng", "isal", "zstd"]

# Default zlib-ng setting: level 6, with one MiB in every three of the uncompressed stream at level 9.
# Go's default (gzip 9 with its own deflate) lands between zlib-ng 7 and 8 in size; zlib-ng 7 is ~2x slower
# than 6 and 8 ~5x, while this mix costs ~1.6x the CPU of level 6 and came out 0.46 % smaller than Go's
# output on a 565 MB /usr/lib layer (the strong members start at deterministic positions, so the output does
# not depend on the thread count).
DEFAULT_GZIP_LEVEL: Final = 6
DEFAULT_GZIP_STRONG_LEVEL: Final = 9
STRONG_WINDOW: Final = 1 << 20
STRONG_EVERY: Final = 3
DEFAULT_ISAL_LEVEL: Final = 2
DEFAULT_LIBDEFLATE_LEVEL: Final = 5
DEFAULT_ZSTD_LEVEL: Final = 3


class Compressor(Protocol):
    """Thread-safe member compressor."""

    name: str
    level: int

    def compress(self, parts: Sequence[Buffer], strong: bool = False) -> bytes: ...

    @property
    def mixes_levels(self) -> bool: ...


class _Deflater(Protocol):
    def compress(self, data: Buffer, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _DeflateModule(Protocol):
    """What a zlib-compatible module (zlib-ng's, isal's) gives us: ``compressobj(level, method, wbits)``."""

    def compressobj(self, level: int, method: int, wbits: int, /) -> _Deflater: ...


class _GzipCompressor:
    def __init__(
        self, name: str, module: _DeflateModule, level: int, strong_level: int | None = None
    ) -> None:
        self.name = name
        self.level = level
        self.strong_level = strong_level
        self._module = module

    @property
    def mixes_levels(self) -> bool:
        return self.strong_level is not None

    def compress(self, parts: Sequence[Buffer], strong: bool = False) -> bytes:
        level = self.strong_level if strong and self.strong_level is not None else self.level
        obj = self._module.compressobj(level, 8, 31)
        out = [obj.compress(p) for p in parts]
        out.append(obj.flush())
        return b"".join(out)


def _libdeflate_names() -> Iterator[str]:
    # The soname first: find_library runs ldconfig in a subprocess, which costs more than the import.
    yield "libdeflate.so.0"
    found = ctypes.util.find_library("deflate")
    if found:
        yield found


def _load_libdeflate() -> ctypes.CDLL | None:
    """The system's libdeflate (Debian: libdeflate0), through ctypes, which releases the GIL on calls."""
    for name in _libdeflate_names():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.libdeflate_alloc_compressor.restype = ctypes.c_void_p
        lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
        lib.libdeflate_free_compressor.restype = None
        lib.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
        lib.libdeflate_gzip_compress_bound.restype = ctypes.c_size_t
        lib.libdeflate_gzip_compress_bound.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.libdeflate_gzip_compress.restype = ctypes.c_size_t
        lib.libdeflate_gzip_compress.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        return lib
    return None


_LIBDEFLATE: Final = _load_libdeflate()


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (part of the stable ABI)."""

    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None


@contextlib.contextmanager
def _pinned(data: Buffer) -> Iterator[int]:
    """The address of a contiguous buffer, held for the ``with`` block. Unlike ``ctypes.from_buffer`` it
    takes read-only buffers too (bytes, slices of a read-only memory map), without copying them."""
    view = _PyBuffer()
    _get_buffer(data, ctypes.byref(view), 0)  # PyBUF_SIMPLE: contiguous bytes, else BufferError
    try:
        yield view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))


class _LibdeflateCompressor:
    """One gzip member per call from a contiguous buffer; one native compressor per thread and level."""

    name = "libdeflate"

    def __init__(self, lib: ctypes.CDLL, level: int) -> None:
        self.level = level
        self._lib = lib
        self._local = threading.local()

    @property
    def mixes_levels(self) -> bool:
        return False

    def _handle(self) -> int:
        local = self._local
        handle: int | None = getattr(local, "handle", None)
        if handle is None:
            handle = self._lib.libdeflate_alloc_compressor(self.level)
            if not handle:
                raise MemoryError("libdeflate_alloc_compressor failed")
            # Freed with the thread's locals (worker threads end with the builder's pool).
            local.handle, local.free, local.out = handle, _Free(self._lib, handle), None
        return handle

    def compress_at(self, address: int, size: int) -> bytes:
        """A gzip member of the ``size`` bytes at ``address`` (memory the caller keeps alive)."""
        handle = self._handle()
        bound = self._lib.libdeflate_gzip_compress_bound(handle, size)
        out = self._local.out
        if out is None or len(out) < bound:
            out = self._local.out = ctypes.create_string_buffer(max(bound, 1 << 20))
        dst = ctypes.addressof(out)
        n = self._lib.libdeflate_gzip_compress(handle, address, size, dst, bound)
        if n == 0:
            raise FormatError("libdeflate: gzip compression failed")
        return ctypes.string_at(dst, n)

    def compress(self, parts: Sequence[Buffer], strong: bool = False) -> bytes:
        if len(parts) == 1:
            with _pinned(parts[0]) as address:
                return self.compress_at(address, memoryview(parts[0]).nbytes)
        # Gather the parts in this thread's scratch buffer: a member is a chunk plus a few tar headers.
        size = sum(memoryview(p).nbytes for p in parts)
        scratch = self._scratch(size)
        into = memoryview(scratch).cast("B")
        pos = 0
        for part in parts:
            n = memoryview(part).nbytes
            into[pos : pos + n] = part
            pos += n
        into.release()
        return self.compress_at(ctypes.addressof(scratch), size)

    def _scratch(self, size: int) -> ctypes.Array[ctypes.c_char]:
        scratch: ctypes.Array[ctypes.c_char] | None = getattr(self._local, "scratch", None)
        if scratch is None or len(scratch) < size:
            scratch = self._local.scratch = ctypes.create_string_buffer(max(size, 4 << 20))
        return scratch


class _Free:
    def __init__(self, lib: ctypes.CDLL, handle: int) -> None:
        self._lib = lib
        self._handle = handle

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit ctypes may already be torn down
            self._lib.libdeflate_free_compressor(self._handle)


def libdeflate_available() -> bool:
    return _LIBDEFLATE is not None


# libdeflate's default level is the fastest whose output is no larger than Go's gzip 9 (estargz.Build's
# default) on the benchmark layers (bench/bench_estargz.py, bench/bench_e2e.py): level 5 is 1.5 % smaller
# on the 568 MB /usr/lib layer and 1.0 % on the 267 MB three-layer image, level 4 is 1.2 % and 0.3 %
# larger; 5 takes 15 % less time than 6. The zlib-ng 6/9 mix stays the fallback.
DEFAULT_BACKEND: Final[Backend] = "libdeflate" if _LIBDEFLATE is not None else "zlib-ng"


class _ZstdCompressor:
    name = "zstd"

    def __init__(self, level: int) -> None:
        self.level = level
        self._local = threading.local()

    def _cctx(self) -> zstandard.ZstdCompressor:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
            self._local.cctx = cctx
        return cctx

    @property
    def mixes_levels(self) -> bool:
        return False

    def compress(self, parts: Sequence[Buffer], strong: bool = False) -> bytes:
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return bytes(self._cctx().compress(data))


def make_compressor(backend: Backend, level: int | None = None) -> Compressor:
    """A compressor for ``backend`` at ``level`` (None: the backend's default; for zlib-ng the 6/9 mix)."""
    if backend == "zlib-ng":
        if level is None:
            return _GzipCompressor("zlib-ng", _zng, DEFAULT_GZIP_LEVEL, DEFAULT_GZIP_STRONG_LEVEL)
        if not 0 <= level <= 9:
            raise FormatError(f"zlib-ng level {level} out of range 0..9")
        return _GzipCompressor("zlib-ng", _zng, level)
    if backend == "libdeflate":
        if _LIBDEFLATE is None:
            raise FormatError("libdeflate is not installed (Debian: libdeflate0)")
        lvl = DEFAULT_LIBDEFLATE_LEVEL if level is None else level
        if not 0 <= lvl <= 12:
            raise FormatError(f"libdeflate level {lvl} out of range 0..12")
        return _LibdeflateCompressor(_LIBDEFLATE, lvl)
    if backend == "isal":
        lvl = DEFAULT_ISAL_LEVEL if level is None else level
        if not 0 <= lvl <= 3:
            raise FormatError(f"isal level {lvl} out of range 0..3")
        return _GzipCompressor("isal", _isal, lvl)
    if backend == "zstd":
        lvl = DEFAULT_ZSTD_LEVEL if level is None else level
        if not 1 <= lvl <= 22:
            raise FormatError(f"zstd level {lvl} out of range 1..22")
        return _ZstdCompressor(lvl)
    raise FormatError(f"unknown compressor backend {backend!r}")
