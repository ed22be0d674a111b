"""Uploading a driver's new blob while it is still being written, when the target is a registry.

A converted layer's bytes go to the content store as the driver writes them; each new blob also gets an
upload session of its own (the distribution API's chunked upload: POST, a PATCH per chunk as the bytes
reach the disk, PUT ?digest= once the blob is committed and its digest known), so the last layer's upload
ends moments after its conversion instead of starting then. The bytes are read back from the blob's file
(a ``GrowingFile``), never queued in memory: the driver never waits for the network, and the uploader
holds one chunk at a time.

A streamed upload is an optimisation, never the only way a blob gets there: one that fails (a registry
fault, a driver that restarts its blob, a conversion that fails) is dropped, and the pipeline pushes the
committed blob from the content store as before (``push_blob``: HEAD first, retried). The digest is not
known before the commit, so a blob the target already holds is found by a HEAD only then: the session is
cancelled instead of committed (its bytes were sent, no second copy is made). Nothing here tags or puts
a manifest; an upload whose conversion then fails leaves at most an orphan blob.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field

from accel.content import BlobWriter, GrowingFile
from accel.converter.progress import Counters
from accel.converter.repositories import RegistryRepository
from accel.errors import CanceledError, ConversionError
from accel.registry import BlobUpload

log = logging.getLogger(__name__)

STREAM_CHUNK = 8 << 20
"""Bytes per PATCH when ``registry.upload_chunk_size`` is not set: few requests, and at most this much
is left to send once a blob is committed."""


class _Restarted(ConversionError):
    """The driver rewound its blob (``seek(0)``): the bytes sent so far are not the blob's."""


@dataclass
class _Stream:
    """One blob's upload: fed by its writer's thread, sent by a thread of its own."""

    reader: GrowingFile
    done: threading.Event = field(default_factory=threading.Event)
    committed: tuple[str, int] | None = None
    outcome: str | None = None  # "uploaded" or "exists" once done; None: failed, push it the usual way
    _reported: int = 0
    _ended: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def written(self, size: int) -> None:
        """The writer's watcher: bytes ``[0, size)`` are on disk."""
        with self._lock:
            if self._ended:
                return
            if size < self._reported:
                self._end(_Restarted("the blob was restarted while it uploaded"))
                return
            self._reported = size
        self.reader.advance_to(size)

    def finish(self, committed: tuple[str, int] | None) -> None:
        """The writer's end: committed, or discarded (None)."""
        with self._lock:
            self.committed = committed
            if not self._ended:
                self._end(None if committed else CanceledError("the blob was discarded"))

    def stop(self) -> None:
        """The uploader gave up: the writer's later reports change nothing."""
        with self._lock:
            self._ended = True
        self.reader.abandon()

    def _end(self, error: BaseException | None) -> None:
        # Once ended the reader's outcome is fixed: a commit after a restart must not make the mixed bytes
        # sent so far look like a whole blob.
        self._ended = True
        self.reader.finish(error)


class StreamedUploads:
    """One conversion's streamed blob uploads to its registry target."""

    def __init__(self, target: RegistryRepository, counters: Counters, chunk_size: int = 0) -> None:
        self.target = target
        self._counters = counters
        self._chunk = chunk_size or STREAM_CHUNK
        self._lock = threading.Lock()
        self._streams: list[_Stream] = []
        self._by_digest: dict[str, _Stream] = {}

    def attach(self, writer: BlobWriter) -> None:
        """Upload ``writer``'s blob as it is written, on a thread of its own."""
        stream = _Stream(GrowingFile(writer.open_reader()))

        def ended(committed: tuple[str, int] | None) -> None:
            if committed is not None:
                with self._lock:
                    self._by_digest.setdefault(committed[0], stream)
            stream.finish(committed)

        writer.watch(stream.written)
        writer.on_end(ended)
        with self._lock:
            self._streams.append(stream)
        threading.Thread(target=self._run, args=(stream,), name="stream-upload", daemon=True).start()

    def _run(self, stream: _Stream) -> None:
        begin = time.monotonic()
        upload: BlobUpload | None = None
        source = io.BufferedReader(stream.reader, self._chunk)
        try:
            upload = self.target.start_upload()
            while chunk := source.read(self._chunk):
                upload.send(chunk)
            assert stream.committed is not None  # the reader ends without an error only after a commit
            digest = stream.committed[0]
            if self.target.has_blob(digest):
                upload.cancel()
                stream.outcome = "exists"
            else:
                upload.commit(digest)
                stream.outcome = "uploaded"
            self._counters.span("push", begin, time.monotonic())
        except BaseException as exc:  # the blob is pushed from the content store instead
            stream.stop()
            if upload is not None:
                upload.cancel()
            if not isinstance(exc, CanceledError):
                log.info("streamed upload dropped, the finished blob is pushed instead: %s", exc)
        finally:
            stream.stop()  # a reader that reached its end is not waited for again by close
            source.close()
            stream.done.set()

    def outcome(self, digest: str) -> str | None:
        """How the streamed upload of ``digest`` ended (``"uploaded"``, ``"exists"``), waiting for it; None
        when none was streamed or it failed."""
        with self._lock:
            stream = self._by_digest.get(digest)
        if stream is None:
            return None
        stream.done.wait()
        return stream.outcome

    def close(self) -> None:
        """Stop every upload still running (after a failure) and wait for them to end."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.stop()
        for stream in streams:
            stream.done.wait()
