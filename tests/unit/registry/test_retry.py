from __future__ import annotations

import email.utils

import pytest

from accel.config import RegistryClientConfig
from accel.errors import TransientRegistryError
from accel.registry.retry import RetryableError, RetryPolicy, parse_retry_after


def policy(waits: list[float], rnd: float = 1.0, **kw: float) -> RetryPolicy:
    params = {"max_retries": 3, "backoff_initial": 0.5, "backoff_max": 3.0, **kw}
    return RetryPolicy(
        int(params["max_retries"]),
        params["backoff_initial"],
        params["backoff_max"],
        sleep=waits.append,
        random=lambda: rnd,
    )


def test_delay_is_full_jitter_of_a_capped_exponential() -> None:
    p = policy([], rnd=1.0)
    assert [p.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    half = policy([], rnd=0.5)
    assert [half.delay(n) for n in range(3)] == [0.25, 0.5, 1.0]
    assert policy([], rnd=0.0).delay(10) == 0.0
    assert policy([]).delay(10_000) == 3.0  # no overflow for huge attempt numbers


def test_retry_after_replaces_jitter_but_is_capped() -> None:
    p = policy([], rnd=0.0)
    assert p.delay(0, retry_after=2.0) == 2.0
    assert p.delay(0, retry_after=120.0) == 3.0
    assert p.delay(0, retry_after=-5.0) == 0.0


def test_call_retries_until_success() -> None:
    waits: list[float] = []
    outcomes: list[object] = [RetryableError("HTTP 500"), RetryableError("HTTP 429", retry_after=1.5), "done"]

    def attempt() -> str:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return str(item)

    assert policy(waits).call(attempt, "GET x") == "done"
    assert waits == [0.5, 1.5]


def test_exhausted_retries_raise_transient_with_reason() -> None:
    waits: list[float] = []
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise RetryableError("HTTP 503")

    with pytest.raises(TransientRegistryError, match=r"GET x: HTTP 503 \(gave up after 4 attempts\)") as info:
        policy(waits).call(attempt, "GET x")
    assert info.value.transient
    assert len(calls) == 4 and len(waits) == 3


def test_progress_resets_the_failure_count() -> None:
    waits: list[float] = []
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= 6:
            raise RetryableError("dropped", progressed=True)
        return "ok"

    assert policy(waits, max_retries=1).call(attempt, "GET blob") == "ok"
    assert waits == [0.5] * 6  # every wait starts the backoff over


def test_non_retryable_errors_pass_through() -> None:
    def attempt() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError):
        policy([]).call(attempt, "x")


def test_from_config() -> None:
    p = RetryPolicy.from_config(RegistryClientConfig(max_retries=7, backoff_initial=0.1, backoff_max=2))
    assert (p.max_retries, p.backoff_initial, p.backoff_max) == (7, 0.1, 2.0)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now=now) == 42.0
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now=now) == 0.0
    for bad in (None, "", "soon", "-1", "1.5"):
        assert parse_retry_after(bad) is None


def test_reasons_that_name_the_operation_are_not_prefixed_twice() -> None:
    def attempt() -> None:
        raise RetryableError("GET manifest h/r:t: ConnectError")

    with pytest.raises(TransientRegistryError) as info:
        policy([]).call(attempt, "GET manifest h/r:t")
    assert str(info.value) == "GET manifest h/r:t: ConnectError (gave up after 4 attempts)"
