"""The few entry points of the system zlib (``libz.so.1``) that Python's ``zlib`` module does not expose.

soci's checkpoints are taken at deflate block boundaries (``inflate(Z_BLOCK)`` and ``z_stream.data_type``),
and extraction restarts mid-stream with ``inflatePrime`` + ``inflateSetDictionary``. Python's ``zlib``
offers none of these, so we call the C library through ``ctypes``; ``inflateInit2_`` checks the size of
our ``z_stream`` against its own, which catches a wrong structure layout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

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


class _Lib:
    def __init__(self, lib: ctypes.CDLL) -> None:
        ptr = ctypes.POINTER(ZStream)
        lib.zlibVersion.restype = ctypes.c_char_p
        self.version: bytes = lib.zlibVersion()
        self.inflateInit2_ = lib.inflateInit2_
        self.inflateInit2_.argtypes = [ptr, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.inflateInit2_.restype = ctypes.c_int
        self.inflate = lib.inflate
        self.inflate.argtypes = [ptr, ctypes.c_int]
        self.inflate.restype = ctypes.c_int
        self.inflateReset2 = lib.inflateReset2
        self.inflateReset2.argtypes = [ptr, ctypes.c_int]
        self.inflateReset2.restype = ctypes.c_int
        self.inflateEnd = lib.inflateEnd
        self.inflateEnd.argtypes = [ptr]
        self.inflateEnd.restype = ctypes.c_int
        self.inflatePrime = lib.inflatePrime
        self.inflatePrime.argtypes = [ptr, ctypes.c_int, ctypes.c_int]
        self.inflatePrime.restype = ctypes.c_int
        self.inflateSetDictionary = lib.inflateSetDictionary
        self.inflateSetDictionary.argtypes = [ptr, ctypes.c_char_p, ctypes.c_uint]
        self.inflateSetDictionary.restype = ctypes.c_int


@cache
def lib() -> _Lib:
    """The loaded system zlib; raises FormatError when it cannot be found."""
    name = ctypes.util.find_library("z") or "libz.so.1"
    try:
        return _Lib(ctypes.CDLL(name))
    except OSError as exc:  # pragma: no cover - libz is part of every base system we run on
        raise FormatError(f"cannot load the system zlib ({name}): {exc}") from exc


class Inflater:
    """One ``z_stream`` set up for inflating; the caller drives ``next_in``/``next_out`` directly."""

    def __init__(self, window_bits: int) -> None:
        self._lib = lib()
        self.strm = ZStream()
        self._ref = ctypes.byref(self.strm)
        rc = self._lib.inflateInit2_(self._ref, window_bits, self._lib.version, ctypes.sizeof(ZStream))
        if rc != Z_OK:
            raise FormatError(f"zlib inflateInit2 failed ({rc})")
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
