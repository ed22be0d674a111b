"""Reading a blob while it is still being written, so a layer converts while its bytes arrive."""

from __future__ import annotations

import io
import os
import threading
from types import TracebackType

from accel.errors import CanceledError


class GrowingFile(io.RawIOBase):
    """A reader of a file that another thread is writing.

    The writer reports how far the file is written (``advance_to``; back to 0 when it starts over: the bytes
    it writes again are the same, so a reader past them only waits), and the end of the blob
    (``finish``, with the writer's error if it failed: a digest mismatch, a registry fault). Reads wait
    for bytes not written yet; the end of the file is reached only once the writer finished without error,
    so a reader never takes an unverified blob for a whole one.

    ``close`` waits for the writer and raises its error: a consumer that stops reading before the end
    (a tar's trailing padding) still learns that the blob did not verify. Leaving a ``with`` block with an
    exception abandons the blob instead: the writer is told (``abandoned``) and the close does not wait.
    """

    def __init__(self, fd: int, size: int | None = None) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._pos = 0
        self._end = 0
        self._done = False
        self._error: BaseException | None = None
        self._abandoned = False
        self._changed = threading.Condition()

    # ------------------------------------------------------------------ the writer's side

    def advance_to(self, end: int) -> None:
        """Bytes ``[0, end)`` are on disk (flushed)."""
        with self._changed:
            self._end = end
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._changed:
            self._done = True
            self._error = error
            self._changed.notify_all()

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def abandon(self) -> None:
        with self._changed:
            self._abandoned = True
            self._changed.notify_all()

    # ------------------------------------------------------------------ the reader's side

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _wait_for(self, position: int) -> int:
        """Wait until byte ``position`` is written or the blob ended; returns the bytes available there."""
        with self._changed:
            while self._end <= position and not self._done and not self._abandoned:
                self._changed.wait()
            if self._error is not None:
                raise self._error
            if self._abandoned:
                raise CanceledError("blob abandoned")
            return max(0, self._end - position)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        available = self._wait_for(self._pos)
        if not available or not len(view):
            return 0
        n = os.preadv(self._fd, [view[: min(len(view), available)]], self._pos)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        elif whence == os.SEEK_END:
            self._pos = self._total() + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        return self._pos

    def _total(self) -> int:
        if self._size is not None:
            return self._size
        with self._changed:
            while not self._done and not self._abandoned:
                self._changed.wait()
            return self._end

    def close(self) -> None:
        if self.closed:
            return
        try:
            with self._changed:
                while not self._done and not self._abandoned:
                    self._changed.wait()
                error = None if self._abandoned else self._error
        finally:
            os.close(self._fd)
            super().close()
        if error is not None:
            raise error

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abandon()
        self.close()
