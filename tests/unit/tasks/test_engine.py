from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from accel.errors import InvalidReferenceError, TransientRegistryError
from accel.metrics import Metrics
from accel.tasks import (
    Intake,
    IntakeWithdrawnError,
    SQLiteTaskStore,
    Task,
    TaskEngine,
    TaskNotFoundError,
    TaskRetryPolicy,
    TaskStateError,
    TaskStatus,
)
from accel.tasks.model import utcnow
from tests.unit.tasks.fake_converter import FakeConverter, digest_of

SRC = "reg.example/library/busybox:latest"
FAST = TaskRetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.05)


def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def fake() -> FakeConverter:
    return FakeConverter()


@pytest.fixture
def make_engine(tmp_path: Path, fake: FakeConverter) -> Iterator[Callable[..., TaskEngine]]:
    engines: list[TaskEngine] = []

    def make(workers: int = 2, **kwargs: object) -> TaskEngine:
        kwargs.setdefault("retry", FAST)
        engine = TaskEngine(SQLiteTaskStore(tmp_path / "tasks.db"), fake, workers=workers, **kwargs)  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    yield make
    if fake.gate is not None:
        fake.gate.set()
    for engine in engines:
        engine.shutdown(grace=2)


def final(engine: TaskEngine, task_id: str, timeout: float = 5.0) -> Task:
    [task] = engine.wait([task_id], timeout)
    assert task.status.final, task
    return task


def test_converts_and_records_result(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    engine = make_engine()
    engine.start()
    task = final(engine, engine.submit(SRC).task.id)
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert (task.target, task.source_digest) == (SRC + "-fake", digest_of(SRC))
    assert task.target_digest == digest_of(SRC + "-fake")
    assert (task.source_size, task.target_size, task.attempts, task.driver) == (1000, 1200, 1, "fake")
    assert task.started is not None and task.finished is not None and task.started <= task.finished
    assert fake.conversions == [SRC]


def test_same_reference_merges_while_pending(
    make_engine: Callable[..., TaskEngine], fake: FakeConverter
) -> None:
    engine = make_engine()
    first = engine.submit(SRC)
    dup = engine.submit(SRC)
    assert not first.merged and dup.merged and dup.task.id == first.task.id
    engine.start()
    assert final(engine, first.task.id).status is TaskStatus.COMPLETED
    assert fake.conversions == [SRC]


def test_processing_task_absorbs_only_its_own_digest(
    make_engine: Callable[..., TaskEngine], fake: FakeConverter
) -> None:
    fake.gate = threading.Event()
    engine = make_engine(workers=1)
    engine.start()
    running = engine.submit(SRC).task
    until(fake.started.is_set)
    assert engine.submit(SRC, digest=digest_of(SRC)).task.id == running.id
    # A push with another digest is newer than what is being converted: it must not be lost.
    newer = engine.submit(SRC, digest="sha256:" + "b" * 64)
    assert not newer.merged
    fake.gate.set()
    assert final(engine, newer.task.id).status is TaskStatus.COMPLETED


def test_same_digest_waits_for_twin_then_finds_target(
    make_engine: Callable[..., TaskEngine], fake: FakeConverter
) -> None:
    fake.gate = threading.Event()
    engine = make_engine(workers=2)
    engine.start()
    first = engine.submit(SRC).task
    until(fake.started.is_set)
    second = engine.submit(SRC).task  # digest unknown at submit: queued, deduplicated after inspect
    assert second.id != first.id
    until(lambda: "waiting for task" in engine.get(second.id).reason)
    assert engine.get(second.id).status is TaskStatus.PENDING
    fake.gate.set()
    done = final(engine, second.id)
    assert done.status is TaskStatus.COMPLETED and "already converted" in done.reason
    assert done.target_digest == digest_of(SRC)
    assert final(engine, first.id).status is TaskStatus.COMPLETED
    assert fake.conversions == [SRC]


def test_own_output_is_ignored(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    engine = make_engine()
    engine.start()
    task = final(engine, engine.submit(SRC + "-fake").task.id)
    assert task.status is TaskStatus.COMPLETED and task.reason.startswith("ignored:")
    assert fake.conversions == []


def test_existing_target_needs_no_work(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    fake.targets[SRC + "-fake"] = digest_of(SRC)
    engine = make_engine()
    engine.start()
    task = final(engine, engine.submit(SRC).task.id)
    assert task.status is TaskStatus.COMPLETED and "already converted" in task.reason
    assert fake.conversions == []


def test_transient_error_is_retried(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    fake.errors = [TransientRegistryError("registry unavailable: 503")]
    metrics = Metrics()
    engine = make_engine(metrics=metrics)
    engine.start()
    task = final(engine, engine.submit(SRC).task.id)
    assert task.status is TaskStatus.COMPLETED and task.attempts == 2
    assert metrics.registry.get_sample_value("acceleration_service_core_task_retries_total") == 1


def test_transient_errors_are_bounded(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    fake.errors = [TransientRegistryError("registry unavailable")] * 5
    engine = make_engine()
    engine.start()
    task = final(engine, engine.submit(SRC).task.id)
    assert task.status is TaskStatus.FAILED and task.attempts == FAST.max_attempts
    assert "registry unavailable" in task.reason


def test_permanent_error_fails_at_once(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    fake.inspect_errors = [InvalidReferenceError("bad reference")]
    engine = make_engine()
    engine.start()
    task = final(engine, engine.submit(SRC).task.id)
    assert (task.status, task.reason, task.attempts) == (TaskStatus.FAILED, "bad reference", 1)


def test_unexpected_exception_fails_the_task(
    make_engine: Callable[..., TaskEngine], fake: FakeConverter
) -> None:
    fake.errors = [RuntimeError("boom")]  # type: ignore[list-item]
    engine = make_engine()
    engine.start()
    task = final(engine, engine.submit(SRC).task.id)
    assert task.status is TaskStatus.FAILED and "RuntimeError: boom" in task.reason
    # The worker survived and still converts.
    assert final(engine, engine.submit(SRC + "2").task.id).status is TaskStatus.COMPLETED


def test_cancel_pending_and_processing(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    fake.gate = threading.Event()
    engine = make_engine(workers=1)
    engine.start()
    running = engine.submit(SRC).task
    until(fake.started.is_set)
    queued = engine.submit("reg.example/other:1").task
    assert engine.cancel(queued.id).status is TaskStatus.CANCELED
    engine.cancel(running.id)
    assert final(engine, running.id).status is TaskStatus.CANCELED
    with pytest.raises(TaskStateError):
        engine.cancel(running.id)
    with pytest.raises(TaskNotFoundError):
        engine.cancel("nope")
    assert fake.conversions == []


def test_retry_failed_task(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    fake.inspect_errors = [InvalidReferenceError("bad reference")]
    engine = make_engine()
    engine.start()
    task = final(engine, engine.submit(SRC).task.id)
    assert task.status is TaskStatus.FAILED
    again = engine.retry(task.id)
    assert again.id == task.id and again.status is TaskStatus.PENDING and again.attempts == 0
    done = final(engine, task.id)
    assert done.status is TaskStatus.COMPLETED and done.attempts == 1
    with pytest.raises(TaskStateError):
        engine.retry(task.id)


def test_worker_pool_is_bounded(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    fake.delay = 0.05
    engine = make_engine(workers=2)
    engine.start()
    ids = [engine.submit(f"reg.example/img{i}:1").task.id for i in range(6)]
    tasks = engine.wait(ids, 10)
    assert all(t.status is TaskStatus.COMPLETED for t in tasks)
    assert fake.max_active == 2


def test_restart_resumes_interrupted_tasks(tmp_path: Path, fake: FakeConverter) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    interrupted, queued = Task(source=SRC, driver_key="fake/1"), Task(source=SRC + "x", driver_key="fake/1")
    interrupted.status, interrupted.attempts = TaskStatus.PROCESSING, 1
    store.add(interrupted)
    store.add(queued)
    engine = TaskEngine(store, fake, workers=2, retry=FAST)
    engine.start()
    try:
        tasks = engine.wait([interrupted.id, queued.id], 5)
        assert [t.status for t in tasks] == [TaskStatus.COMPLETED] * 2
        assert tasks[0].attempts == 2
    finally:
        engine.shutdown(2)


def test_shutdown_waits_for_running_conversions(
    make_engine: Callable[..., TaskEngine], fake: FakeConverter
) -> None:
    fake.delay = 0.3
    engine = make_engine(workers=1)
    engine.start()
    task = engine.submit(SRC).task
    until(fake.started.is_set)
    assert engine.shutdown(grace=5)
    assert engine.get(task.id).status is TaskStatus.COMPLETED


def test_shutdown_after_grace_leaves_task_pending(
    make_engine: Callable[..., TaskEngine], fake: FakeConverter
) -> None:
    fake.gate = threading.Event()
    engine = make_engine(workers=1)
    engine.start()
    task = engine.submit(SRC).task
    until(fake.started.is_set)
    assert engine.shutdown(grace=0.1)
    stored = engine.get(task.id)
    assert stored.status is TaskStatus.PENDING and stored.attempts == 0


def test_metrics_follow_conversions(make_engine: Callable[..., TaskEngine], fake: FakeConverter) -> None:
    metrics = Metrics()
    engine = make_engine(metrics=metrics)
    engine.submit(SRC)
    sample = metrics.registry.get_sample_value
    assert sample("acceleration_service_core_queue_depth") == 1
    engine.start()
    until(lambda: sample("acceleration_service_core_tasks_finished_total", {"status": "COMPLETED"}) == 1)
    assert sample("acceleration_service_core_conversions_op_total", {"op": "convert"}) == 1
    assert sample("acceleration_service_core_conversions_op_duration_seconds_count", {"op": "convert"}) == 1
    assert (
        sample("acceleration_service_core_conversion_stage_duration_seconds_sum", {"stage": "push"}) == 0.03
    )
    assert sample("acceleration_service_core_bytes_out_total") == 1200
    assert sample("acceleration_service_core_queue_depth") == 0


def test_failed_conversion_counts_an_error(
    make_engine: Callable[..., TaskEngine], fake: FakeConverter
) -> None:
    fake.errors = [InvalidReferenceError("nope")]
    metrics = Metrics()
    engine = make_engine(metrics=metrics)
    engine.start()
    final(engine, engine.submit(SRC).task.id)
    assert (
        metrics.registry.get_sample_value(
            "acceleration_service_core_conversions_op_error_total", {"op": "convert"}
        )
        == 1
    )


def test_retention_purges_old_tasks(make_engine: Callable[..., TaskEngine], tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    old = Task(source=SRC, status=TaskStatus.COMPLETED, finished=utcnow() - timedelta(hours=2))
    store.add(old)
    engine = make_engine(retention=timedelta(hours=1))
    engine.start()
    with pytest.raises(TaskNotFoundError):
        engine.get(old.id)


def test_retry_delay_grows_and_is_capped() -> None:
    policy = TaskRetryPolicy(max_attempts=10, backoff_initial=1.0, backoff_max=5.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_concurrent_submits_share_commits(tmp_path: Path, fake: FakeConverter) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    calls: list[int] = []
    gate = threading.Event()
    original = store.add_many

    def counting_add_many(tasks: list[Task]) -> None:
        calls.append(len(tasks))
        gate.wait(5)  # hold the first commit so that the other submits queue behind it
        original(tasks)

    store.add_many = counting_add_many  # type: ignore[method-assign]
    engine = TaskEngine(store, fake, workers=1, retry=FAST)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(engine.submit(f"reg.example/g{n % 5}:1").task.id))
        for n in range(20)
    ]
    for thread in threads:
        thread.start()
    until(lambda: calls, 5)
    until(lambda: sum(t.is_alive() for t in threads) == 20 and len(engine._batch) + sum(calls) >= 5, 5)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(results) == 20 and len(set(results)) == 5  # duplicates merged before they were durable
    assert sum(calls) == 5 and len(calls) <= 3  # five new tasks, written in few transactions
    assert {t.id for t in store.list_tasks()} == set(results)


def test_failed_commit_is_reported_to_every_waiter(tmp_path: Path, fake: FakeConverter) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")

    def broken(tasks: list[Task]) -> None:
        raise OSError("disk full")

    store.add_many = broken  # type: ignore[method-assign]
    engine = TaskEngine(store, fake, workers=1, retry=FAST)
    with pytest.raises(OSError, match="disk full"):
        engine.submit(SRC)
    assert engine._unsaved == {}


def test_submit_many_is_one_transaction_and_redelivery_adds_nothing(
    make_engine: Callable[..., TaskEngine], fake: FakeConverter
) -> None:
    fake.gate = threading.Event()
    engine = make_engine(workers=1)
    commits: list[int] = []
    original = engine.store.add_many

    def counting(tasks: list[Task]) -> None:
        commits.append(len(tasks))
        original(tasks)

    engine.store.add_many = counting  # type: ignore[method-assign]
    engine.start()
    requests = [(f"reg.example/app{n}:1", digest_of(f"reg.example/app{n}:1")) for n in range(300)]
    first = engine.submit_many([*requests, requests[0]])
    assert commits == [300] and [s.merged for s in first[:300]] == [False] * 300 and first[300].merged
    until(fake.started.is_set)  # one task is PROCESSING, the rest PENDING: a redelivery merges into all
    again = engine.submit_many(requests)
    assert commits == [300] and all(s.merged for s in again)
    assert [s.task.id for s in again] == [s.task.id for s in first[:300]]
    assert len(engine.list_tasks(limit=1000)) == 300


def test_withdrawn_intake_saves_nothing_unless_someone_else_wants_it(
    make_engine: Callable[..., TaskEngine],
) -> None:
    engine = make_engine(workers=1)
    entered, release = threading.Event(), threading.Event()
    original = engine.store.add_many

    def stalled(tasks: list[Task]) -> None:
        entered.set()
        assert release.wait(5)
        original(tasks)

    engine.store.add_many = stalled  # type: ignore[method-assign]
    gave_up, patient = Intake(), Intake()
    outcome: dict[str, object] = {}

    def submit(name: str, intake: Intake, sources: list[str]) -> None:
        try:
            outcome[name] = engine.submit_many([(s, "") for s in sources], intake=intake)
        except IntakeWithdrawnError as exc:
            outcome[name] = exc

    first = threading.Thread(target=submit, args=("gave_up", gave_up, ["reg.example/a:1", "reg.example/b:1"]))
    first.start()
    assert entered.wait(5)
    assert gave_up.withdraw() and gave_up.withdraw()  # before the commit: nothing will be saved
    release.set()
    first.join(5)
    assert isinstance(outcome["gave_up"], IntakeWithdrawnError)
    assert engine.list_tasks() == []
    # A task that a second caller also asked for is kept when only the first one withdraws.
    entered.clear()
    release.clear()
    blocker = threading.Thread(target=submit, args=("blocker", Intake(), ["reg.example/z:1"]))
    blocker.start()
    assert entered.wait(5)  # the commit of z stalls; what follows queues for the next commit
    withdrawing = Intake()
    both = [
        threading.Thread(target=submit, args=(name, intake, ["reg.example/a:1"]))
        for name, intake in (("withdrawing", withdrawing), ("patient", patient))
    ]
    both[0].start()
    until(lambda: engine._batch)
    both[1].start()
    until(lambda: len(engine._unsaved["reg.example/a:1"].intakes) == 2)
    assert withdrawing.withdraw()
    release.set()
    for thread in (blocker, *both):
        thread.join(5)
    assert isinstance(outcome["withdrawing"], IntakeWithdrawnError)
    [kept] = outcome["patient"]  # type: ignore[misc]
    assert {t.source for t in engine.list_tasks()} == {"reg.example/a:1", "reg.example/z:1"}
    assert kept.task.id in {t.id for t in engine.list_tasks()}
    assert not patient.withdraw()  # sealed: its tasks are committed, the caller must report them


def test_store_error_saves_nothing_and_reaches_the_caller(make_engine: Callable[..., TaskEngine]) -> None:
    engine = make_engine()

    def half_then_fail(tasks: list[Task]) -> None:
        SQLiteTaskStore.add_many(engine.store, tasks[:1])  # type: ignore[arg-type]
        raise OSError("disk full")

    engine.store.add_many = half_then_fail  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        engine.submit_many([("reg.example/a:1", ""), ("reg.example/b:1", "")])
    assert engine.list_tasks() == []  # the transaction rolled back the half that was written


def test_tasks_db_is_private(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    store.add(Task(source=SRC))
    for path in tmp_path.glob("tasks.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    store.close()
