"""The task engine: durable queue, bounded worker pool, dedup, retries, cancel and graceful shutdown.

Every request only writes a PENDING record; worker threads (``converter.worker`` of them) claim tasks from
the store and run inspect → convert, converting exactly the digest inspect resolved (or the webhook named).
Duplicates are merged twice: at submit by reference string and digest (a PENDING task that has no digest
yet will resolve the tag later anyway), and after inspect by (source digest, driver key, target) — a task
whose twin is already converting waits for it and then finds the target up to date.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Protocol

from accel.converter.progress import ResolvedSource
from accel.errors import AccelError, CanceledError
from accel.metrics import Metrics
from accel.tasks.model import (
    IntakeWithdrawnError,
    Task,
    TaskNotFoundError,
    TaskStateError,
    TaskStatus,
    TaskSummary,
    utcnow,
)
from accel.tasks.store import TaskStore

log = logging.getLogger("accel.tasks")

_PURGE_EVERY = 60.0


class Inspection(Protocol):
    @property
    def digest(self) -> str: ...
    @property
    def resolved(self) -> ResolvedSource: ...
    @property
    def target(self) -> str: ...
    @property
    def converted_by_us(self) -> str | None: ...
    @property
    def existing_target_digest(self) -> str | None: ...


class Result(Protocol):
    @property
    def target(self) -> str: ...
    @property
    def target_digest(self) -> str: ...
    @property
    def source_size(self) -> int: ...
    @property
    def target_size(self) -> int: ...
    @property
    def timings(self) -> Mapping[str, float]: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def cache_hits(self) -> int: ...
    @property
    def cache_misses(self) -> int: ...
    @property
    def cache_saved(self) -> int: ...


class ConverterLike(Protocol):
    """The part of :class:`accel.converter.Converter` the engine uses (must be safe to call from threads)."""

    @property
    def driver_name(self) -> str: ...
    def driver_key(self) -> str: ...
    def inspect(self, source: str, *, digest: str | None = None) -> Inspection: ...
    def convert(
        self,
        source: str | ResolvedSource,
        *,
        target: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Result: ...


@dataclass(frozen=True)
class TaskRetryPolicy:
    """How often a whole task is attempted again after a transient failure, with exponential backoff.

    Not :class:`accel.registry.RetryPolicy`, which retries one registry call within an attempt.
    """

    max_attempts: int = 5
    backoff_initial: float = 2.0
    backoff_max: float = 300.0

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff_initial * 2 ** max(attempt - 1, 0), self.backoff_max))


class Intake:
    """One caller's share of a group commit; it may withdraw until the commit is decided.

    The webhook handler withdraws when the store is too slow for Harbor's timeout, so that its "retry
    later" answer is true: a withdrawn request leaves no task behind.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "open"

    def withdraw(self) -> bool:
        """True if nothing of this request will be saved; False if its tasks are being committed."""
        with self._lock:
            if self._state == "open":
                self._state = "withdrawn"
            return self._state == "withdrawn"

    @property
    def withdrawn(self) -> bool:
        with self._lock:
            return self._state == "withdrawn"

    def seal(self) -> bool:
        """Called by the writer just before committing: True if the caller still wants its tasks."""
        with self._lock:
            if self._state == "open":
                self._state = "sealed"
            return self._state == "sealed"


class _Wakeup:
    """Wakes one idle worker per call, which wakes the next when it found work: a burst of new tasks
    (or another node's NOTIFY) costs one claim per task and one empty claim, not one per idle worker.

    A worker notes :meth:`mark` before it claims and waits only if no wake-up came since, so a task
    queued between its empty claim and its wait is not left for the idle timeout.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def mark(self) -> int:
        with self._cond:
            return self._generation

    def one(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify()

    def all(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            if self._generation == seen:
                self._cond.wait(timeout)


@dataclass
class _Unsaved:
    task: Task
    intakes: list[Intake] = field(default_factory=list)
    writing: bool = False  # in the transaction now being written; its owners are fixed
    done: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class Submitted:
    task: Task
    merged: bool  # True: an equivalent task was already queued; no new task was created


class TaskEngine:
    def __init__(
        self,
        store: TaskStore,
        converter: ConverterLike,
        *,
        workers: int,
        metrics: Metrics | None = None,
        retry: TaskRetryPolicy | None = None,
        retention: timedelta = timedelta(hours=24),
        clock: Callable[[], float] = time.time,
        node: str = "",
        lease: float = 30.0,
    ) -> None:
        self.store = store
        self.converter = converter
        self.workers = max(1, workers)
        self.metrics = metrics
        self.retry_policy = retry or TaskRetryPolicy()
        self.retention = retention
        self._clock = clock
        # Several nodes may share the store: each claims tasks under its id for ``lease`` seconds, renewed
        # by a heartbeat, so a node that dies loses them to the others once the lease runs out.
        self.node = node or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.lease = lease
        self._heartbeat_stop = threading.Event()
        self._driver_key = converter.driver_key()
        self._lock = threading.Lock()
        self._intake = threading.Condition()
        self._unsaved: dict[str, _Unsaved] = {}  # accepted, being written by a group commit
        self._batch: list[_Unsaved] = []
        self._flushing = False
        self._wake = _Wakeup()
        self._stopping = threading.Event()
        self._shutdown_cancel = threading.Event()
        self._done = threading.Condition()
        self._running: dict[str, threading.Event] = {}
        self._cancel_requested: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._last_purge = 0.0
        if metrics is not None:
            metrics.track_queue(self._queue_depth, self._running_count)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self.store.on_change(self._wake.one)  # another node queued or released work
        self._reclaim(reset_waits=True)
        self._purge()
        heartbeat = threading.Thread(target=self._heartbeat, name="accel-heartbeat", daemon=True)
        heartbeat.start()
        for i in range(self.workers):
            thread = threading.Thread(target=self._worker, name=f"accel-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, grace: float = 30.0) -> bool:
        """Stop taking tasks; wait up to ``grace`` s for running ones, then cancel them back to PENDING.

        Returns True when every worker finished in time.
        """
        self._stopping.set()
        self._wake.all()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            log.warning("grace period over, interrupting running conversions")
            self._shutdown_cancel.set()
            with self._lock:
                for event in self._running.values():
                    event.set()
            late = time.monotonic() + 5.0
            for thread in self._threads:
                thread.join(max(0.0, late - time.monotonic()))
        clean = not any(t.is_alive() for t in self._threads)
        self._heartbeat_stop.set()
        try:
            self.store.release(self.node)  # what still runs here may be taken back without a lease's wait
        except Exception:
            log.exception("cannot release this node's leases")
        with self._done:
            self._done.notify_all()
        return clean

    def healthy(self) -> bool:
        try:
            self.store.ping()
        except Exception:
            return False
        return self._stopping.is_set() or all(t.is_alive() for t in self._threads)

    # -- API ---------------------------------------------------------------------------------------------

    def submit(self, source: str, *, digest: str = "") -> Submitted:
        """Queue a conversion of ``source``; ``digest`` is the pushed manifest digest, if known."""
        return self.submit_many([(source, digest)])[0]

    def submit_many(
        self, requests: Sequence[tuple[str, str]], *, intake: Intake | None = None
    ) -> list[Submitted]:
        """Queue conversions of (source, digest) pairs, all new tasks in one durable transaction.

        An active task for the same reference absorbs a request when it resolved, or was queued for,
        exactly ``digest``, or when it is PENDING with no digest yet (it will resolve the tag later).
        Otherwise the push may be newer than what it converts, and a new task is queued so that no push is
        lost; each task converts the digest it was queued for even if the tag moves before it runs. So a
        redelivered webhook never adds a task for a source that is queued or running.

        With ``intake``, the caller may :meth:`Intake.withdraw` until the write commits: then nothing of
        this call is saved and :class:`IntakeWithdrawnError` is raised.
        """
        intake = intake or Intake()
        results: list[Submitted] = []
        mine: list[_Unsaved] = []
        with self._intake:
            # A task whose commit is being decided cannot take another owner: wait for the outcome.
            while any(u.writing for u in (self._unsaved.get(source) for source, _ in requests) if u):
                self._intake.wait()
            fresh = [source for source, _ in requests if source not in self._unsaved]
            active = self.store.find_active_many(fresh, self._driver_key) if fresh else {}
            for source, digest in requests:
                unsaved = self._unsaved.get(source)
                if unsaved is None:
                    found = next(
                        (
                            t
                            for t in active.get(source, [])
                            # A task pinned to another digest converts that push, not this one.
                            if (t.status is TaskStatus.PENDING and not t.source_digest)
                            or (digest and t.source_digest == digest)
                        ),
                        None,
                    )
                    if found is not None:
                        results.append(Submitted(found, merged=True))
                        continue
                    task = Task(
                        source=source,
                        driver=self.converter.driver_name,
                        driver_key=self._driver_key,
                        source_digest=digest,
                    )
                    unsaved = _Unsaved(task)
                    self._unsaved[source] = unsaved
                    self._batch.append(unsaved)
                    merged = False
                else:
                    merged = True
                if intake not in unsaved.intakes:
                    unsaved.intakes.append(intake)
                    mine.append(unsaved)
                results.append(Submitted(unsaved.task, merged=merged))
            self._await_durable(mine, intake)
        if mine:
            self._wake.one()
        return results

    def _await_durable(self, mine: list[_Unsaved], intake: Intake) -> None:
        """Group commit: one waiting caller writes every queued new task with one fsync; the others wait.

        Called with ``self._intake`` held. Under a burst of webhooks this turns N serial fsyncs into a few.
        A task is kept when at least one caller that asked for it still wants it at commit time.
        """
        while any(not u.done for u in mine):
            if self._batch and not self._flushing:
                batch, self._batch = self._batch, []
                for unsaved in batch:
                    unsaved.writing = True
                self._flushing = True
                self._intake.release()
                error: BaseException | None = None
                dropped: list[str] = []
                try:
                    with self.store.transaction():
                        self.store.add_many([u.task for u in batch])
                        # Decided last, inside the transaction: a caller that gave up meanwhile (and
                        # answered "retry later") must leave nothing behind.
                        dropped = [u.task.id for u in batch if not any([i.seal() for i in u.intakes])]
                        if dropped:
                            self.store.delete(dropped)
                    if dropped:
                        log.warning("tasks withdrawn before commit, not saved", extra={"count": len(dropped)})
                except BaseException as exc:
                    error = exc
                finally:
                    self._intake.acquire()
                    self._flushing = False
                for unsaved in batch:
                    unsaved.done, unsaved.error = True, error
                    self._unsaved.pop(unsaved.task.source, None)
                self._intake.notify_all()
            else:
                self._intake.wait()
        if intake.withdrawn:
            raise IntakeWithdrawnError("the caller withdrew before the tasks were saved; nothing was saved")
        error = next((u.error for u in mine if u.error is not None), None)
        if error is not None:
            raise error  # the transaction rolled back: nothing of this call was saved

    def get(self, task_id: str) -> Task:
        task = self.store.get(task_id)
        if task is None:
            raise TaskNotFoundError(f"task {task_id} not found")
        return task

    def list_tasks(self, *, limit: int = 1000, status: TaskStatus | None = None) -> list[Task]:
        return self.store.list_tasks(limit=limit, status=status)

    def summary(self, window: timedelta = timedelta(hours=24)) -> TaskSummary:
        """The queue now and what finished within ``window``."""
        return self.store.summary(utcnow() - window)

    def cancel(self, task_id: str) -> Task:
        """PENDING tasks are canceled at once; PROCESSING ones at the converter's next check."""
        task = self.get(task_id)
        if task.status is TaskStatus.PENDING:
            task = replace(task, status=TaskStatus.CANCELED, reason="canceled on request", finished=utcnow())
            if self.store.save_if(task, TaskStatus.PENDING):
                self._finished(task)
                return task
            task = self.get(task_id)
        if task.status is TaskStatus.PROCESSING:
            # Recorded for whichever node runs it (its heartbeat reads it); also stopped here if it runs here.
            self.store.request_cancel(task_id)
            with self._lock:
                # Also remembered when this node's worker has claimed the task but not registered it yet
                # (only then: a stale entry would cancel the task if it is retried and runs here).
                if task.node == self.node:
                    self._cancel_requested.add(task_id)
                event = self._running.get(task_id)
                if event is not None:
                    event.set()
            return task
        raise TaskStateError(f"task {task_id} is {task.status.value} and cannot be canceled")

    def retry(self, task_id: str) -> Task:
        """Queue a FAILED or CANCELED task again (same id, attempts start over)."""
        task = self.get(task_id)
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELED):
            raise TaskStateError(
                f"task {task_id} is {task.status.value}; only FAILED or CANCELED can be retried"
            )
        previous = task.status
        task.status, task.reason, task.attempts, task.not_before = TaskStatus.PENDING, "", 0, 0.0
        task.started = task.finished = None
        if not self.store.save_if(task, previous):
            raise TaskStateError(f"task {task_id} changed state meanwhile")
        with self._lock:
            self._cancel_requested.discard(task_id)
        self._wake.one()
        return task

    def wait(self, task_ids: list[str], timeout: float | None = None) -> list[Task]:
        """Block until every task is final (or the timeout passes, or the engine stops)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while True:
                tasks = [self.get(i) for i in task_ids]
                if all(t.status.final for t in tasks) or self._stopping.is_set():
                    return tasks
                remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if remaining <= 0:
                    return tasks
                self._done.wait(remaining)

    # -- workers -----------------------------------------------------------------------------------------

    def _queue_depth(self) -> float:
        """The shared queue's depth (every node's PENDING tasks); NaN while the store is unreachable, so
        a scrape still answers and the gap shows."""
        try:
            return float(self.store.count(TaskStatus.PENDING))
        except Exception:
            return float("nan")

    def _running_count(self) -> float:
        with self._lock:
            return float(len(self._running))

    def _worker(self) -> None:
        while not self._stopping.is_set():
            seen = self._wake.mark()
            try:
                now = self._clock()
                task = self.store.claim_next(now, self.node, now + self.lease)
            except AccelError as exc:
                log.warning("cannot claim a task", extra={"error": exc.message})
                self._stopping.wait(1.0)
                continue
            except Exception:
                log.exception("cannot read the task store")
                self._stopping.wait(1.0)
                continue
            if task is None:
                self._wake.wait(seen, self._idle_timeout())
                continue
            self._wake.one()  # there may be more: let an idle worker look while this one converts
            try:
                self._process(task)
            except Exception:
                # Only the store can fail here; the task stays PROCESSING and runs again after a restart.
                log.exception("cannot record task state", extra={"task": task.id})
            if self._clock() - self._last_purge > _PURGE_EVERY:
                self._purge()

    def _heartbeat(self) -> None:
        """Renew this node's leases, stop what another node asked to cancel, take back expired tasks."""
        every = max(0.05, self.lease / 3)
        while not self._heartbeat_stop.wait(every):
            try:
                with self._lock:
                    running = list(self._running)
                canceled = self.store.renew(self.node, running, self._clock() + self.lease)
                if canceled:
                    with self._lock:
                        for task_id in canceled:
                            self._cancel_requested.add(task_id)
                            event = self._running.get(task_id)
                            if event is not None:
                                event.set()
                if not self._stopping.is_set():
                    self._reclaim(reset_waits=False)
            except Exception:
                log.exception("heartbeat: cannot reach the task store")

    def _reclaim(self, *, reset_waits: bool) -> None:
        requeued, failed = self.store.reclaim_expired(
            self._clock(), self.retry_policy.max_attempts, reset_waits=reset_waits
        )
        if requeued or failed:
            log.info("took back tasks whose lease expired", extra={"requeued": requeued, "failed": failed})
            self._wake.one()

    def _idle_timeout(self) -> float:
        try:
            wake = self.store.next_wakeup()
        except Exception:
            return 1.0
        if wake is None:
            return 5.0
        return max(0.01, min(5.0, wake - self._clock()))

    def _purge(self) -> None:
        self._last_purge = self._clock()
        try:
            removed = self.store.purge_finished(utcnow() - self.retention)
        except Exception:
            log.exception("cannot purge old tasks")
            return
        if removed:
            log.info("purged finished tasks", extra={"count": removed})

    def _process(self, task: Task) -> None:
        cancel = threading.Event()
        with self._lock:
            self._running[task.id] = cancel
            if task.id in self._cancel_requested:
                cancel.set()
        # The claim started this attempt (attempts, started, reason) in the same write.
        log.info("task started", extra={"task": task.id, "source": task.source, "attempt": task.attempts})
        try:
            self._run(task, cancel)
            if task.status is TaskStatus.PENDING and task.id in self._cancel_requested:
                self._finish(task, TaskStatus.CANCELED, "canceled on request")  # canceled while deferred
        except CanceledError:
            if self._shutdown_cancel.is_set() and task.id not in self._cancel_requested:
                task.attempts -= 1
                self._requeue(task, 0.0, "interrupted by shutdown; will run again")
            else:
                self._finish(task, TaskStatus.CANCELED, "canceled on request")
        except AccelError as exc:
            if (
                exc.transient
                and task.attempts < self.retry_policy.max_attempts
                and not self._stopping.is_set()
            ):
                delay = self.retry_policy.delay(task.attempts)
                if self.metrics is not None:
                    self.metrics.task_retries.inc()
                self._requeue(task, self._clock() + delay, f"attempt {task.attempts} failed: {exc.message}")
                log.warning(
                    "transient error, will retry",
                    extra={"task": task.id, "source": task.source, "error": exc.message, "retry_in": delay},
                )
            elif exc.transient and self._stopping.is_set():
                self._requeue(task, 0.0, f"attempt {task.attempts} failed: {exc.message}")
            else:
                self._finish(task, TaskStatus.FAILED, exc.message)
        except Exception as exc:
            log.exception("unexpected error", extra={"task": task.id, "source": task.source})
            self._finish(task, TaskStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.pop(task.id, None)
                self._cancel_requested.discard(task.id)

    def _run(self, task: Task, cancel: threading.Event) -> None:
        # Pinned to the digest the webhook named (or an earlier attempt resolved): a tag moved since is
        # another push, with a task of its own.
        inspection = self.converter.inspect(task.source, digest=task.source_digest or None)
        if cancel.is_set():
            raise CanceledError("canceled")
        task.source_digest, task.target = inspection.digest, inspection.target
        if inspection.converted_by_us:
            self._finish(task, TaskStatus.COMPLETED, f"ignored: {inspection.converted_by_us}")
            return
        if inspection.existing_target_digest:
            task.target_digest = inspection.existing_target_digest
            self._finish(task, TaskStatus.COMPLETED, "target already converted from this source digest")
            return
        # The twin lock lives in the store, so it holds across every node sharing it.
        owner = self.store.lock_conversion(task)
        if owner is not None:
            task.attempts -= 1
            # Woken when the owner lets go; the wait only bounds how late a dead owner is noticed.
            wait = max(self.lease, 1.0)
            self._requeue(task, self._clock() + wait, f"waiting for task {owner} (same source digest)")
            log.info("merged with a running task", extra={"task": task.id, "twin": owner})
            return
        metrics = self.metrics
        if metrics is not None:
            metrics.op_total.labels("convert").inc()
        begin = time.monotonic()
        try:
            result = self.converter.convert(inspection.resolved, target=inspection.target, cancel=cancel)
        except BaseException:
            if metrics is not None:
                metrics.op_errors.labels("convert").inc()
            raise
        finally:
            self._unlock(task)
        elapsed = time.monotonic() - begin
        task.target, task.target_digest = result.target, result.target_digest
        task.source_size, task.target_size = result.source_size, result.target_size
        task.cache_hits, task.cache_misses = result.cache_hits, result.cache_misses
        task.cache_saved = result.cache_saved
        task.bytes_in, task.bytes_out = result.bytes_in, result.bytes_out
        task.timings = dict(result.timings)
        if metrics is not None:
            metrics.op_duration.labels("convert").observe(result.timings.get("total", elapsed))
            metrics.observe_conversion(dict(result.timings), result.bytes_in, result.bytes_out)
            metrics.layer_cache.labels("hit").inc(result.cache_hits)
            metrics.layer_cache.labels("miss").inc(result.cache_misses)
        self._finish(task, TaskStatus.COMPLETED, "")

    def _unlock(self, task: Task) -> None:
        try:
            self.store.unlock_conversion(task)
        except Exception:
            # Not fatal: the lock only binds PROCESSING tasks, and the twins look again after their wait.
            log.exception("cannot release the twin lock", extra={"task": task.id})
        self._wake.one()

    def _save(self, task: Task) -> None:
        """Save ``task``, waiting out a database that is away for a while (a restart, a failover): a
        conversion that ran must not be lost for want of its record. Gives up only when stopping."""
        delay = 0.2
        while True:
            try:
                self.store.save(task)
                return
            except AccelError as exc:
                if not exc.transient or self._heartbeat_stop.is_set():
                    raise
                log.warning("cannot save task, will retry", extra={"task": task.id, "error": exc.message})
                self._heartbeat_stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _requeue(self, task: Task, not_before: float, reason: str) -> None:
        task.status, task.not_before, task.reason = TaskStatus.PENDING, not_before, reason
        self._save(task)
        with self._done:
            self._done.notify_all()

    def _finish(self, task: Task, status: TaskStatus, reason: str) -> None:
        task.status, task.reason, task.finished = status, reason, utcnow()
        self._save(task)
        self._finished(task)

    def _finished(self, task: Task) -> None:
        if self.metrics is not None:
            self.metrics.tasks_finished.labels(task.status.value).inc()
        level = logging.WARNING if task.status is TaskStatus.FAILED else logging.INFO
        log.log(
            level,
            "task finished",
            extra={
                "task": task.id,
                "source": task.source,
                "status": task.status.value,
                "target": task.target,
                "target_digest": task.target_digest,
                "reason": task.reason,
                "cache_hits": task.cache_hits,
                "cache_misses": task.cache_misses,
            },
        )
        with self._done:
            self._done.notify_all()
