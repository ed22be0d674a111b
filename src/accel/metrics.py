"""Prometheus metrics with upstream-compatible names, held in a registry object (never the global one).

Each app or engine gets its own :class:`Metrics`, so tests can build several side by side. Names follow the
Go service (``acceleration_service_core_conversions_op_*`` with ``op="convert"``, and the echo-contrib HTTP
metrics under ``acceleration_service_<server.name>``); the queue, stage and byte metrics are additions.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_CORE = "acceleration_service_core"
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_SIZE_BUCKETS = (100, 1000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)


def _subsystem(server_name: str) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", server_name.lower()) or "api"
    return f"acceleration_service_{name}"


class Metrics:
    """All metrics of one service instance."""

    def __init__(self, server_name: str = "API") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.op_duration = Histogram(
            f"{_CORE}_conversions_op_duration_seconds",
            "Duration of successful conversion operations.",
            ["op"],
            buckets=_STAGE_BUCKETS,
            registry=reg,
        )
        self.op_total = Counter(
            f"{_CORE}_conversions_op", "Conversion operations started.", ["op"], registry=reg
        )
        self.op_errors = Counter(
            f"{_CORE}_conversions_op_error", "Conversion operations that failed.", ["op"], registry=reg
        )
        self.stage_duration = Histogram(
            f"{_CORE}_conversion_stage_duration_seconds",
            "Duration of each conversion stage (pull, convert, push).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=reg,
        )
        self.bytes_in = Counter(f"{_CORE}_bytes_in", "Bytes pulled from registries.", registry=reg)
        self.bytes_out = Counter(f"{_CORE}_bytes_out", "Bytes pushed to registries.", registry=reg)
        self.tasks_finished = Counter(
            f"{_CORE}_tasks_finished", "Tasks that reached a final state.", ["status"], registry=reg
        )
        self.task_retries = Counter(
            f"{_CORE}_task_retries", "Task attempts rescheduled after a transient error.", registry=reg
        )
        self.layer_cache = Counter(
            f"{_CORE}_layer_cache", "Converted-layer cache lookups by outcome.", ["result"], registry=reg
        )
        self.queue_depth = Gauge(
            f"{_CORE}_queue_depth",
            "Tasks waiting (PENDING) in the queue, every node's when nodes share a database.",
            registry=reg,
        )
        self.tasks_running = Gauge(f"{_CORE}_tasks_running", "Tasks being processed.", registry=reg)
        self.webhook_events = Counter(
            f"{_CORE}_webhook_resources",
            "Webhook resources by outcome (queued, merged, ignored, rejected).",
            ["result"],
            registry=reg,
        )
        api = _subsystem(server_name)
        labels = ["code", "method", "host", "url"]
        self.requests = Counter(f"{api}_requests", "HTTP requests processed.", labels, registry=reg)
        self.request_duration = Histogram(
            f"{api}_request_duration_seconds", "HTTP request latency.", labels, registry=reg
        )
        self.request_size = Histogram(
            f"{api}_request_size_bytes", "HTTP request sizes.", labels, buckets=_SIZE_BUCKETS, registry=reg
        )
        self.response_size = Histogram(
            f"{api}_response_size_bytes", "HTTP response sizes.", labels, buckets=_SIZE_BUCKETS, registry=reg
        )

    def track_queue(self, pending: Callable[[], float], running: Callable[[], float]) -> None:
        """Read queue depth and running count at scrape time instead of keeping counters in sync."""
        self.queue_depth.set_function(pending)
        self.tasks_running.set_function(running)

    def observe_conversion(self, timings: dict[str, float], bytes_in: int, bytes_out: int) -> None:
        for stage in ("pull", "convert", "push"):
            if stage in timings:
                self.stage_duration.labels(stage).observe(timings[stage])
        self.bytes_in.inc(max(bytes_in, 0))
        self.bytes_out.inc(max(bytes_out, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
