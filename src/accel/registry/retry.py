"""The one retry policy for registry calls: exponential backoff with full jitter, honouring Retry-After."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from accel.config import RegistryClientConfig
from accel.errors import TransientRegistryError

T = TypeVar("T")
log = logging.getLogger("accel.registry")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class RetryableError(Exception):
    """Raised by one attempt to ask the policy for another one.

    ``progressed`` says the attempt moved data (a resumable download got further): the backoff starts over,
    so a long transfer over a flaky link is not killed by drops that each made progress.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None, progressed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.progressed = progressed


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; waits are ``uniform(0, min(max, initial * 2**n))``.

    One registry call within one task attempt; :class:`accel.tasks.TaskRetryPolicy` decides whether the
    whole task runs again. A server's Retry-After replaces the jittered wait but is capped at
    ``backoff_max``, so one call never blocks a worker longer than the configuration allows.
    """

    max_retries: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    @classmethod
    def from_config(cls, settings: RegistryClientConfig) -> RetryPolicy:
        return cls(settings.max_retries, settings.backoff_initial, settings.backoff_max)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before retry number ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max)
        ceiling = min(self.backoff_max, self.backoff_initial * (2.0 ** min(attempt, 62)))
        return ceiling * self.random()

    def call(self, attempt_fn: Callable[[], T], what: str) -> T:
        """Run ``attempt_fn`` until it returns; RetryableError triggers a wait and another attempt.

        When retries are exhausted, raise TransientRegistryError naming ``what`` and the last reason.
        """
        failures = 0
        total = 0
        while True:
            total += 1
            try:
                return attempt_fn()
            except RetryableError as exc:
                if exc.progressed:
                    failures = 0
                # Reasons raised by the client already start with what they were doing.
                reason = exc.reason if exc.reason.startswith(what) else f"{what}: {exc.reason}"
                if failures >= self.max_retries:
                    raise TransientRegistryError(f"{reason} (gave up after {total} attempts)") from None
                wait = self.delay(failures, exc.retry_after)
                log.info("%s; retry %d/%d in %.2fs", reason, failures + 1, self.max_retries, wait)
                failures += 1
                self.sleep(wait)
