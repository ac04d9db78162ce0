"""Retries inside :class:`gateway.upstream.Upstream`: the bare first attempt, then tenacity's backoff."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import gateway.upstream as upstream_module
import tests.echo_provider  # noqa: F401  (registers "echo", a provider that needs no api_base)
from gateway.config import ModelConfig, RetryConfig
from gateway.errors import UpstreamError, upstream_failure
from gateway.providers.base import Capabilities, Reply
from gateway.upstream import Attempts, Upstream

ANSWER = {
    "id": "x",
    "object": "text_completion",
    "choices": [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
BODY = {"model": "m", "prompt": "hello", "max_tokens": 4}


class Scripted(Capabilities):
    """Fails with each status of ``failures`` in turn, then answers."""

    def __init__(self, failures: list[int]) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def call(self, endpoint: str, body: dict[str, Any] | None) -> Reply:
        self.calls += 1
        if self.failures:
            raise upstream_failure(self.failures.pop(0), "scripted")
        return Reply(orjson.dumps(ANSWER))


def upstream_of(provider: Scripted, attempts: int) -> Upstream:
    model = ModelConfig(
        name="m", provider="echo", retries=RetryConfig(attempts=attempts, initial_s=0, max_s=0)
    )
    return Upstream(model, provider)  # type: ignore[arg-type]


class BackoffSpy:
    """Wraps an upstream's backoff to note the attempt number tenacity computes each wait for."""

    def __init__(self, upstream: Upstream) -> None:
        self.attempt_numbers: list[int] = []
        self._inner = upstream._backoff
        upstream._backoff = self  # type: ignore[assignment]

    def __call__(self, state: Any) -> float:
        self.attempt_numbers.append(state.attempt_number)
        return float(self._inner(state))


async def test_a_call_answered_at_once_builds_no_retry_state(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tenacity(*args: object, **kwargs: object) -> None:
        raise AssertionError("AsyncRetrying built for a call that needed no retry")

    monkeypatch.setattr(upstream_module, "AsyncRetrying", no_tenacity)
    provider = Scripted([])
    attempts = Attempts()
    answered = await upstream_of(provider, attempts=4).call("/v1/completions", BODY, attempts)
    assert answered.data == ANSWER
    assert (provider.calls, attempts.count, attempts.errors) == (1, 1, [])


async def test_retries_after_a_failed_first_attempt_wait_and_count_as_if_tenacity_ran_them_all() -> None:
    provider = Scripted([500, 503])
    upstream = upstream_of(provider, attempts=4)
    spy = BackoffSpy(upstream)
    attempts = Attempts()
    answered = await upstream.call("/v1/completions", BODY, attempts)
    assert answered.data == ANSWER
    assert provider.calls == attempts.count == 3
    assert [e["status"] for e in attempts.errors] == [500, 503]
    assert spy.attempt_numbers == [1, 2]  # the wait after attempt n is tenacity's for attempt n


async def test_the_attempt_limit_counts_the_bare_first_attempt() -> None:
    provider = Scripted([500, 502, 503, 504])
    upstream = upstream_of(provider, attempts=3)
    attempts = Attempts()
    with pytest.raises(UpstreamError) as raised:
        await upstream.call("/v1/completions", BODY, attempts)
    assert raised.value.status == 503  # the last attempt's error, as tenacity re-raises it
    assert provider.calls == attempts.count == 3
    assert [e["status"] for e in attempts.errors] == [500, 502, 503]


@pytest.mark.parametrize(("status", "attempts_allowed"), [(422, 4), (500, 1)])
async def test_a_first_failure_that_may_not_be_retried_is_raised_at_once(
    status: int, attempts_allowed: int
) -> None:
    provider = Scripted([status])
    attempts = Attempts()
    with pytest.raises(UpstreamError) as raised:
        await upstream_of(provider, attempts_allowed).call("/v1/completions", BODY, attempts)
    assert raised.value.status == status
    assert provider.calls == attempts.count == 1
