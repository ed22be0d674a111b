"""Durable conversion tasks: the task model, its store (SQLite behind a small interface) and the engine."""

from accel.tasks.engine import ConverterLike, Submitted, TaskEngine, TaskRetryPolicy
from accel.tasks.model import Task, TaskNotFoundError, TaskStateError, TaskStatus
from accel.tasks.store import SQLiteTaskStore, TaskStore

__all__ = [
    "ConverterLike",
    "SQLiteTaskStore",
    "Submitted",
    "Task",
    "TaskEngine",
    "TaskNotFoundError",
    "TaskRetryPolicy",
    "TaskStateError",
    "TaskStatus",
    "TaskStore",
]
