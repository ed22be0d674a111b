from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from accel.tasks import SQLiteTaskStore, Task, TaskStatus
from accel.tasks.model import utcnow


def _store(tmp_path: Path) -> SQLiteTaskStore:
    return SQLiteTaskStore(tmp_path / "tasks.db")


def test_roundtrip_keeps_every_field(tmp_path: Path) -> None:
    store = _store(tmp_path)
    task = Task(source="r.example/a:1", driver="fake", driver_key="fake/1", target="r.example/a:1-x")
    task.source_digest, task.source_size, task.attempts = "sha256:" + "a" * 64, 42, 3
    task.started = utcnow()
    store.add(task)
    loaded = store.get(task.id)
    assert loaded is not None
    assert loaded.to_dict() == task.to_dict()
    assert loaded.driver_key == "fake/1"
    assert store.get("missing") is None


def test_database_uses_wal(tmp_path: Path) -> None:
    _store(tmp_path)
    mode = sqlite3.connect(tmp_path / "tasks.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_list_is_newest_first_and_filters(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first, second = Task(source="h/a:1"), Task(source="h/b:1")
    second.created = first.created + timedelta(seconds=1)
    second.status = TaskStatus.FAILED
    store.add(first)
    store.add(second)
    assert [t.id for t in store.list_tasks()] == [second.id, first.id]
    assert [t.id for t in store.list_tasks(status=TaskStatus.PENDING)] == [first.id]
    assert len(store.list_tasks(limit=1)) == 1


def test_claim_is_compare_and_set_and_respects_not_before(tmp_path: Path) -> None:
    store = _store(tmp_path)
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
    other = SQLiteTaskStore(tmp_path / "tasks.db")
    assert other.claim_next(2000.0, "n1", 2000.0 + 30) is None


def test_save_if_refuses_a_changed_status(tmp_path: Path) -> None:
    store = _store(tmp_path)
    task = Task(source="h/a:1")
    store.add(task)
    assert store.claim_next(0.0, "n1", 0.0 + 30) is not None
    task.status = TaskStatus.CANCELED
    assert not store.save_if(task, TaskStatus.PENDING)
    stored = store.get(task.id)
    assert stored is not None and stored.status is TaskStatus.PROCESSING


def test_reclaim_takes_back_only_expired_leases(tmp_path: Path) -> None:
    store = _store(tmp_path)
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


def test_cancel_request_reaches_the_running_node(tmp_path: Path) -> None:
    store = _store(tmp_path)
    task = Task(source="h/a:1")
    store.add(task)
    assert store.request_cancel(task.id) is False, "only a running task is asked to stop"
    assert store.claim_next(0.0, "n1", 100.0) is not None
    assert store.renew("n1", [task.id], 200.0) == set()
    assert store.request_cancel(task.id) is True
    assert store.renew("n1", [task.id], 300.0) == {task.id}
    store.release("n1")
    assert store.reclaim_expired(1.0, max_attempts=5) == (1, 0), "a released lease is expired at once"


def test_find_active_and_count(tmp_path: Path) -> None:
    store = _store(tmp_path)
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


def test_purge_only_removes_old_finished_tasks(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old, recent, pending = Task(source="h/a:1"), Task(source="h/b:1"), Task(source="h/c:1")
    old.status = recent.status = TaskStatus.COMPLETED
    old.finished = utcnow() - timedelta(days=2)
    recent.finished = utcnow()
    for task in (old, recent, pending):
        store.add(task)
    assert store.purge_finished(utcnow() - timedelta(days=1)) == 1
    assert {t.id for t in store.list_tasks()} == {recent.id, pending.id}
