"""Durable conversion tasks: the task model, its store (SQLite behind a small interface) and the engine."""

from accel.tasks.engine import ConverterLike, Intake, Submitted, TaskEngine, TaskRetryPolicy
from accel.tasks.model import (
    IntakeWithdrawnError,
    Task,
    TaskNotFoundError,
    TaskStateError,
    TaskStatus,
    TaskStoreUnavailableError,
    TaskSummary,
)
from accel.tasks.store import SQLiteTaskStore, TaskStore

__all__ = [
    "ConverterLike",
    "Intake",
    "IntakeWithdrawnError",
    "SQLiteTaskStore",
    "Submitted",
    "Task",
    "TaskEngine",
    "TaskNotFoundError",
    "TaskRetryPolicy",
    "TaskStateError",
    "TaskStatus",
    "TaskStore",
    "TaskStoreUnavailableError",
    "TaskSummary",
]
