"""The task record: one requested conversion of one source reference."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from accel.errors import AccelError


class TaskStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def active(self) -> bool:
        return self in (TaskStatus.PENDING, TaskStatus.PROCESSING)

    @property
    def final(self) -> bool:
        return not self.active


class TaskStoreUnavailableError(AccelError):
    """The task database refused or failed a write; nothing of that write was saved."""

    code = "ERR_UNAVAILABLE"
    status = 503
    transient = True


class IntakeWithdrawnError(TaskStoreUnavailableError):
    """The caller gave up waiting for the write and withdrew it before it committed."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def new_task_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Task:
    """A conversion task. ``driver_key`` and ``not_before`` are internal and not part of the JSON view."""

    source: str
    driver: str = ""
    driver_key: str = ""
    id: str = field(default_factory=new_task_id)
    created: datetime = field(default_factory=utcnow)
    started: datetime | None = None
    finished: datetime | None = None
    target: str = ""
    source_digest: str = ""
    target_digest: str = ""
    source_size: int = 0
    target_size: int = 0
    status: TaskStatus = TaskStatus.PENDING
    reason: str = ""
    attempts: int = 0
    cache_hits: int = 0  # converted layers taken from the layer cache
    cache_misses: int = 0  # layers converted because the cache had nothing usable
    cache_saved: int = 0  # source layer bytes the cache hits spared from download and conversion
    bytes_in: int = 0  # bytes pulled from the source registry
    bytes_out: int = 0  # bytes pushed to the target
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage (pull, convert, ...)
    node: str = ""  # the node that claimed it last (its lease is kept by the store alone)
    # Unix time before which a PENDING task is not picked up (retry backoff, waiting for a duplicate).
    not_before: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The API's task JSON (upstream's fields plus ours); timestamps are RFC 3339 UTC or null."""
        data = asdict(self)
        del data["driver_key"], data["not_before"]
        for key in ("created", "started", "finished"):
            data[key] = format_time(getattr(self, key))
        data["status"] = self.status.value
        return data


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """The queue now and the tasks finished since ``since``: what acceld's dashboard tiles show."""

    since: datetime
    pending: int = 0
    processing: int = 0
    completed: int = 0
    failed: int = 0
    canceled: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    cache_saved: int = 0

    @classmethod
    def from_counts(cls, since: datetime, rows: Iterable[tuple[str, int, int, int, int]]) -> TaskSummary:
        """From (status, count, bytes_in, bytes_out, cache_saved) per status, as a store's query groups
        them; the byte sums count only finished tasks (running ones have not moved their bytes yet)."""
        counts = {status.value.lower(): 0 for status in TaskStatus}
        sums = [0, 0, 0]
        for status, count, *moved in rows:
            counts[status.lower()] = count
            if TaskStatus(status).final:
                sums = [total + value for total, value in zip(sums, moved, strict=True)]
        return cls(since, **counts, bytes_in=sums[0], bytes_out=sums[1], cache_saved=sums[2])

    @property
    def success_rate(self) -> float | None:
        """Completed of completed and failed (canceled ones say nothing of the service), None when none."""
        decided = self.completed + self.failed
        return self.completed / decided if decided else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"] = format_time(self.since)
        data["success_rate"] = self.success_rate
        return data


class TaskNotFoundError(AccelError):
    """No task has this id (or it was purged after its retention)."""

    code = "ERR_NOT_FOUND"
    status = 404


class TaskStateError(AccelError):
    """The operation does not apply to the task's current state (e.g. retrying a running task)."""

    code = "ERR_CONFLICT"
    status = 409
