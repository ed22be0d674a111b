"""The few entry points of zlib that Python's ``zlib`` module does not expose.

Random access into gzip takes checkpoints at deflate block boundaries (``inflate(Z_BLOCK)`` and
``z_stream.data_type``) and restarts mid-stream with ``inflatePrime`` + ``inflateSetDictionary``. Python's
``zlib`` offers none of these, so we call the C library through ``ctypes``; ``inflateInit2_`` checks the
size of our stream structure against its own, which catches a wrong layout.

The library is zlib-ng's native API where it can be had, from the ``zlib_ng`` package we depend on (its
extension module exports the ``zng_*`` functions): its inflate is about 1.5 times the system zlib's here,
and inflate is most of the cost of indexing a gzip layer. Block boundaries and windows are properties of
the deflate stream, not of the decoder, so both give the same checkpoints byte for byte. The system
``libz.so.1`` remains the fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

from accel.errors import FormatError

Z_OK = 0
Z_STREAM_END = 1
Z_NEED_DICT = 2
Z_BUF_ERROR = -5
Z_NO_FLUSH = 0
Z_BLOCK = 5

WINDOW_BITS_AUTO = 47  # 15 + 32: zlib or gzip header, detected automatically
WINDOW_BITS_RAW = -15


class ZStream(ctypes.Structure):
    """``z_stream`` for LP64 and ILP32 (``uLong`` is ``c_ulong`` on both)."""

    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


class ZngStream(ctypes.Structure):
    """zlib-ng's native ``zng_stream``: ``z_stream`` but for a 32-bit ``adler``."""

    _fields_ = [
        *(field for field in ZStream._fields_ if field[0] not in ("adler", "reserved")),
        ("adler", ctypes.c_uint32),
        ("reserved", ctypes.c_ulong),
    ]


class _Lib:
    def __init__(
        self, lib: ctypes.CDLL, *, prefix: str = "", stream: type[ctypes.Structure] = ZStream
    ) -> None:
        self.stream = stream
        ptr = ctypes.POINTER(stream)
        version = getattr(lib, "zlibng_version" if prefix else "zlibVersion")
        version.restype = ctypes.c_char_p
        self.version: bytes = version()
        self.name = f"zlib-ng {self.version.decode()}" if prefix else f"zlib {self.version.decode()}"

        def entry(name: str) -> Any:
            return getattr(lib, prefix + name)

        self.inflateInit2_ = entry("inflateInit2_")
        self.inflateInit2_.argtypes = [ptr, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.inflateInit2_.restype = ctypes.c_int
        self.inflate = entry("inflate")
        self.inflate.argtypes = [ptr, ctypes.c_int]
        self.inflate.restype = ctypes.c_int
        self.inflateReset2 = entry("inflateReset2")
        self.inflateReset2.argtypes = [ptr, ctypes.c_int]
        self.inflateReset2.restype = ctypes.c_int
        self.inflateEnd = entry("inflateEnd")
        self.inflateEnd.argtypes = [ptr]
        self.inflateEnd.restype = ctypes.c_int
        self.inflatePrime = entry("inflatePrime")
        self.inflatePrime.argtypes = [ptr, ctypes.c_int, ctypes.c_int]
        self.inflatePrime.restype = ctypes.c_int
        self.inflateSetDictionary = entry("inflateSetDictionary")
        self.inflateSetDictionary.argtypes = [ptr, ctypes.c_char_p, ctypes.c_uint]
        self.inflateSetDictionary.restype = ctypes.c_int


@cache
def lib() -> _Lib:
    """zlib-ng if its package is installed, else the system zlib; FormatError when neither loads."""
    try:
        import zlib_ng.zlib_ng as zng

        return _Lib(ctypes.CDLL(zng.__file__), prefix="zng_", stream=ZngStream)
    except (ImportError, OSError, AttributeError):
        pass
    return system_lib()


@cache
def system_lib() -> _Lib:
    name = ctypes.util.find_library("z") or "libz.so.1"
    try:
        return _Lib(ctypes.CDLL(name))
    except OSError as exc:  # pragma: no cover - libz is part of every base system we run on
        raise FormatError(f"cannot load the system zlib ({name}): {exc}") from exc


class Inflater:
    """One ``z_stream`` set up for inflating; the caller drives ``next_in``/``next_out`` directly."""

    def __init__(self, window_bits: int, library: _Lib | None = None) -> None:
        self._open = False
        self._lib = library or lib()
        self.strm: ZStream = self._lib.stream()  # type: ignore[assignment]  # same fields the callers use
        self._ref = ctypes.byref(self.strm)
        rc = self._lib.inflateInit2_(self._ref, window_bits, self._lib.version, ctypes.sizeof(self.strm))
        if rc != Z_OK:
            raise FormatError(f"{self._lib.name}: inflateInit2 failed ({rc})")
        self._open = True

    def inflate(self, flush: int) -> int:
        return int(self._lib.inflate(self._ref, flush))

    def reset(self, window_bits: int) -> None:
        if self._lib.inflateReset2(self._ref, window_bits) != Z_OK:
            raise FormatError("zlib inflateReset2 failed")

    def prime(self, bits: int, value: int) -> None:
        if self._lib.inflatePrime(self._ref, bits, value) != Z_OK:
            raise FormatError("zlib inflatePrime failed")

    def set_dictionary(self, window: bytes) -> None:
        if self._lib.inflateSetDictionary(self._ref, window, len(window)) != Z_OK:
            raise FormatError("zlib inflateSetDictionary failed")

    def message(self) -> str:
        msg = self.strm.msg
        return msg.decode("utf-8", "replace") if msg else "corrupt deflate data"

    def close(self) -> None:
        if self._open:
            self._lib.inflateEnd(self._ref)
            self._open = False

    def __del__(self) -> None:
        self.close()


def address(data: bytes) -> int:
    """Address of the first byte of an (immutable, kept-alive) bytes object."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def library_name() -> str:
    """Which zlib inflates (``zlib-ng 2.3.3`` or ``zlib 1.2.13``), for benchmarks and diagnostics."""
    return lib().name
