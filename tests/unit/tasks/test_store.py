"""The task-store contract, run against both stores: the embedded SQLite file and a real PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from accel.database import PostgresDatabase
from accel.tasks import SQLiteTaskStore, Task, TaskStatus, TaskStore
from accel.tasks.model import utcnow
from accel.tasks.postgres import PostgresTaskStore

# A factory: every call opens another store on the same database, as another node would.
StoreFactory = Callable[[], TaskStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    databases: list[PostgresDatabase] = []
    if request.param == "sqlite":

        def factory() -> TaskStore:
            return SQLiteTaskStore(tmp_path / "tasks.db")

    else:
        dsn: str = request.getfixturevalue("postgres_dsn")

        def factory() -> TaskStore:
            databases.append(PostgresDatabase(dsn))
            return PostgresTaskStore(databases[-1])

    yield factory
    for database in databases:
        database.close()


@pytest.fixture
def store(open_store: StoreFactory) -> TaskStore:
    return open_store()


def test_roundtrip_keeps_every_field(store: TaskStore) -> None:
    task = Task(source="r.example/a:1", driver="fake", driver_key="fake/1", target="r.example/a:1-x")
    task.source_digest, task.source_size, task.attempts = "sha256:" + "a" * 64, 42, 3
    task.started = utcnow()
    store.add(task)
    loaded = store.get(task.id)
    assert loaded is not None
    assert loaded.to_dict() == task.to_dict()
    assert loaded.driver_key == "fake/1"
    assert store.get("missing") is None


def test_sqlite_database_uses_wal(tmp_path: Path) -> None:
    SQLiteTaskStore(tmp_path / "tasks.db")
    mode = sqlite3.connect(tmp_path / "tasks.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_list_is_newest_first_and_filters(store: TaskStore) -> None:
    first, second = Task(source="h/a:1"), Task(source="h/b:1")
    second.created = first.created + timedelta(seconds=1)
    second.status = TaskStatus.FAILED
    store.add(first)
    store.add(second)
    assert [t.id for t in store.list_tasks()] == [second.id, first.id]
    assert [t.id for t in store.list_tasks(status=TaskStatus.PENDING)] == [first.id]
    assert len(store.list_tasks(limit=1)) == 1


def test_claim_is_compare_and_set_and_respects_not_before(store: TaskStore, open_store: StoreFactory) -> None:
    later, now = Task(source="h/a:1", not_before=1000.0), Task(source="h/b:1")
    store.add(later)
    store.add(now)
    claimed = store.claim_next(500.0, "n1", 500.0 + 30)
    assert claimed is not None and claimed.id == now.id and claimed.status is TaskStatus.PROCESSING
    assert store.claim_next(500.0, "n1", 500.0 + 30) is None
    assert store.next_wakeup() == 1000.0
    again = store.claim_next(1000.0, "n1", 1000.0 + 30)
    assert again is not None and again.id == later.id
    # A second store on the same file (another instance) cannot claim a task twice.
    other = open_store()
    assert other.claim_next(2000.0, "n1", 2000.0 + 30) is None


def test_save_if_refuses_a_changed_status(store: TaskStore) -> None:
    task = Task(source="h/a:1")
    store.add(task)
    assert store.claim_next(0.0, "n1", 0.0 + 30) is not None
    task.status = TaskStatus.CANCELED
    assert not store.save_if(task, TaskStatus.PENDING)
    stored = store.get(task.id)
    assert stored is not None and stored.status is TaskStatus.PROCESSING


def test_reclaim_takes_back_only_expired_leases(store: TaskStore) -> None:
    fresh, worn, live = Task(source="h/a:1"), Task(source="h/b:1"), Task(source="h/c:1")
    waiting = Task(source="h/d:1", not_before=9e9)
    fresh.attempts, worn.attempts = 1, 5
    for task in (fresh, worn, live, waiting):
        store.add(task)
    # Claimed by two nodes: n1's leases end at 100, n2's (renewed) at 300.
    assert store.claim_next(0.0, "n1", 100.0) is not None
    assert store.claim_next(0.0, "n1", 100.0) is not None
    assert store.claim_next(0.0, "n2", 100.0) is not None
    owners = {t.id: t.node for t in store.list_tasks() if t.status is TaskStatus.PROCESSING}
    n2_tasks = [task_id for task_id, node in owners.items() if node == "n2"]
    assert store.renew("n2", n2_tasks, 300.0) == set()
    for task in store.list_tasks():  # attempts as the workers would have recorded them
        if task.id in (fresh.id, worn.id, live.id):
            task.attempts = {fresh.id: 1, worn.id: 5, live.id: 1}[task.id]
            store.save(task)

    assert store.reclaim_expired(50.0, max_attempts=5) == (0, 0)  # nobody's lease ran out yet
    requeued, failed = store.reclaim_expired(200.0, max_attempts=5, reset_waits=True)

    states = {t.id: t for t in store.list_tasks()}
    still = [t for t in states.values() if t.status is TaskStatus.PROCESSING]
    assert [t.node for t in still] == ["n2"], "a live node's task is left alone"
    assert requeued + failed == 2
    assert sum(t.status is TaskStatus.FAILED and "interrupted" in t.reason for t in states.values()) == failed
    assert states[waiting.id].not_before == 0.0


def test_cancel_request_reaches_the_running_node(store: TaskStore) -> None:
    task = Task(source="h/a:1")
    store.add(task)
    assert store.request_cancel(task.id) is False, "only a running task is asked to stop"
    assert store.claim_next(0.0, "n1", 100.0) is not None
    assert store.renew("n1", [task.id], 200.0) == set()
    assert store.request_cancel(task.id) is True
    assert store.renew("n1", [task.id], 300.0) == {task.id}
    store.release("n1")
    assert store.reclaim_expired(1.0, max_attempts=5) == (1, 0), "a released lease is expired at once"


def test_find_active_and_count(store: TaskStore) -> None:
    a, b, done = (
        Task(source="h/a:1", driver_key="k"),
        Task(source="h/a:1", driver_key="other"),
        Task(source="h/a:1"),
    )
    done.driver_key, done.status = "k", TaskStatus.COMPLETED
    for task in (a, b, done):
        store.add(task)
    assert [t.id for t in store.find_active("h/a:1", "k")] == [a.id]
    assert store.count(TaskStatus.PENDING) == 2
    assert store.count(TaskStatus.COMPLETED) == 1


def test_purge_only_removes_old_finished_tasks(store: TaskStore) -> None:
    old, recent, pending = Task(source="h/a:1"), Task(source="h/b:1"), Task(source="h/c:1")
    old.status = recent.status = TaskStatus.COMPLETED
    old.finished = utcnow() - timedelta(days=2)
    recent.finished = utcnow()
    for task in (old, recent, pending):
        store.add(task)
    assert store.purge_finished(utcnow() - timedelta(days=1)) == 1
    assert {t.id for t in store.list_tasks()} == {recent.id, pending.id}


def test_find_active_many_and_summary(store: TaskStore) -> None:
    a, b, c = Task(source="h/a:1", driver_key="k"), Task(source="h/b:1", driver_key="k"), Task(source="h/c:1")
    done = Task(source="h/b:1", driver_key="k", status=TaskStatus.COMPLETED, bytes_in=10, bytes_out=4)
    done.finished = utcnow()
    store.add_many([a, b, c, done])
    found = store.find_active_many(["h/a:1", "h/b:1", "h/c:1", "h/a:1"], "k")
    assert {source: [t.id for t in tasks] for source, tasks in found.items()} == {
        "h/a:1": [a.id],
        "h/b:1": [b.id],
    }
    summary = store.summary(utcnow() - timedelta(hours=1))
    assert (summary.pending, summary.completed, summary.bytes_in, summary.bytes_out) == (3, 1, 10, 4)


def test_transaction_rolls_back_whole(store: TaskStore) -> None:
    kept, dropped = Task(source="h/a:1"), Task(source="h/b:1")
    with pytest.raises(RuntimeError), store.transaction():
        store.add_many([kept, dropped])
        raise RuntimeError("the caller gave up")
    assert store.list_tasks() == []
    with store.transaction():
        store.add_many([kept, dropped])
        store.delete([dropped.id])
    assert [t.id for t in store.list_tasks()] == [kept.id]


def _converting(source: str, key: str = "k") -> Task:
    task = Task(source=source, driver_key=key, source_digest="sha256:" + "1" * 64, target="h/x:1-nydus")
    return task


def test_twin_lock_is_held_by_one_task_across_stores(store: TaskStore, open_store: StoreFactory) -> None:
    other = open_store()
    first, twin, unrelated = (
        _converting("h/x:1"),
        _converting("h/x:latest"),
        _converting("h/x:1", key="other"),
    )
    store.add_many([first, twin, unrelated])
    for _ in range(3):
        assert store.claim_next(0.0, "n1", 100.0) is not None
    assert store.lock_conversion(first) is None
    assert other.lock_conversion(twin) == first.id, "the second node sees who converts that digest"
    assert other.lock_conversion(unrelated) is None, "another driver key is another conversion"

    twin.status, twin.not_before = TaskStatus.PENDING, 9e9  # requeued to wait for its twin
    other.save(twin)
    store.unlock_conversion(first)
    waiting = store.get(twin.id)
    assert waiting is not None and waiting.not_before == 0.0, "the waiting twin is woken"
    assert other.claim_next(1.0, "n2", 100.0) is not None
    assert other.lock_conversion(twin) is None, "free once its owner let go"


def test_twin_lock_does_not_outlive_the_run(store: TaskStore) -> None:
    # A lock left behind by a node that died is lifted when its task is taken back, and a finished task
    # never blocks one (the lock binds running tasks only).
    dead, heir, later = _converting("h/x:1"), _converting("h/x:2"), _converting("h/x:3")
    store.add_many([dead, heir, later])
    for _ in range(3):
        assert store.claim_next(0.0, "n1", 10.0) is not None
    assert store.lock_conversion(dead) is None
    assert store.reclaim_expired(20.0, max_attempts=5) == (3, 0)
    claimed = store.claim_next(21.0, "n2", 100.0)
    assert claimed is not None and store.lock_conversion(claimed) is None
    claimed.status = TaskStatus.COMPLETED
    store.save(claimed)  # finished without unlocking (the database was away then)
    again = store.claim_next(21.0, "n2", 100.0)
    assert again is not None and store.lock_conversion(again) is None


def test_racing_stores_claim_every_task_once(open_store: StoreFactory) -> None:
    stores = [open_store(), open_store()]
    stores[0].add_many([Task(source=f"h/r:{i}") for i in range(200)])
    claimed: list[list[str]] = [[], []]

    def drain(index: int) -> None:
        while (task := stores[index].claim_next(0.0, f"n{index}", 100.0)) is not None:
            claimed[index].append(task.id)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = claimed[0] + claimed[1]
    assert len(everything) == 200 and len(set(everything)) == 200
    assert stores[1].count(TaskStatus.PROCESSING) == 200
