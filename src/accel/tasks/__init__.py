"""Durable conversion tasks: the task model, its store (SQLite behind a small interface) and the engine."""

from accel.tasks.engine import ConverterLike, RetryPolicy, Submitted, TaskEngine
from accel.tasks.model import Task, TaskNotFoundError, TaskStateError, TaskStatus
from accel.tasks.store import SQLiteTaskStore, TaskStore

__all__ = [
    "ConverterLike",
    "RetryPolicy",
    "SQLiteTaskStore",
    "Submitted",
    "Task",
    "TaskEngine",
    "TaskNotFoundError",
    "TaskStateError",
    "TaskStatus",
    "TaskStore",
]
