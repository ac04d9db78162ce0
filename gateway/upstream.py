"""One configured model's way upstream: scheduler → retries → (micro-batcher) → provider.

Retries (tenacity) wrap each whole attempt, scheduling included, so a retried
request queues behind others like anyone else. Only failures that may pass
are retried: 408, 429, 5xx, timeouts, dropped connections and torn bodies;
never another 4xx. Every attempt is noted for the record, and the client
sees an error only after the last one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from gateway.batcher import MicroBatcher, choices_by_prompt, single_prompt
from gateway.config import ModelConfig
from gateway.errors import UpstreamError
from gateway.providers.base import Provider, Reply
from gateway.scheduler import MAX_PAUSE_S, Scheduler
from gateway.tokens import OutputEstimate, input_tokens, trusted_usage


@dataclass
class Attempts:
    """What happened on each try of one request, for its record."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0
    first_event_at: float | None = None  # wall clock of a stream's first event

    def ttft_ms(self, started: float) -> float | None:
        """Milliseconds from ``started`` (wall clock) to a stream's first event; None if not streamed."""
        return None if self.first_event_at is None else round((self.first_event_at - started) * 1000, 3)

    def failed(self, error: UpstreamError, started: float) -> None:
        self.errors.append(
            {
                "status": error.status,
                "code": error.code,
                "message": error.message,
                "ms": round((time.monotonic() - started) * 1000, 3),
            }
        )


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retryable


class Upstream:
    """Calls one model's provider within its limits, retrying what may pass."""

    def __init__(self, model: ModelConfig, provider: Provider) -> None:
        self.model = model
        self.provider = provider
        self.scheduler = Scheduler(model.name, model.limits())
        self.output = OutputEstimate()
        self._backoff = wait_exponential_jitter(
            multiplier=model.retries.initial_s, max=model.retries.max_s, jitter=model.retries.initial_s
        )
        self._tiktoken_model = model.target_model if model.provider == "litellm" else None
        batching = model.batching
        self.batcher = (
            MicroBatcher(batching.window_ms / 1000, batching.max_batch, self._send_batch)
            if batching
            else None
        )

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, but never less than the upstream asked for."""
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, UpstreamError) and exc.retry_after else 0.0
        return max(float(self._backoff(state)), min(asked, MAX_PAUSE_S))

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.model.retries.attempts),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )

    async def call(self, endpoint: str, body: dict[str, Any] | None, attempts: Attempts) -> Answered:
        """The provider's answer, parsed, after as many attempts as configured.

        Batchable completions go through the micro-batcher when it is on; their
        answer is marked ``batched`` and carries the shared call's attempts.
        """
        if self.batcher and endpoint == "/v1/completions" and body:
            prompt = single_prompt(body)
            if prompt is not None:
                try:
                    data, shared = await self.batcher.submit(body, prompt)
                except BatchFailed as failed:
                    attempts.count, attempts.errors = failed.attempts.count, list(failed.attempts.errors)
                    if not failed.refused_for_one_of_many():
                        raise failed.error from None
                    # One prompt the upstream refuses (vLLM answers a whole list 400 when one is
                    # over max_model_len) must not fail the others: each asks again alone.
                    return await self._call_retrying(endpoint, body, attempts)
                attempts.count, attempts.errors = shared.count, list(shared.errors)
                return Answered(data, orjson.dumps(data), {}, batched=True)
        return await self._call_retrying(endpoint, body, attempts)

    async def _send_batch(self, body: dict[str, Any]) -> tuple[dict[str, Any], Attempts]:
        attempts = Attempts()
        size = len(body["prompt"])
        try:  # an answer without one choice per prompt is an attempt that failed, retried like a 5xx
            answered = await self._call_retrying(
                "/v1/completions", body, attempts, lambda data: choices_by_prompt(data, size)
            )
        except UpstreamError as exc:
            raise BatchFailed(exc, attempts, size) from exc
        return answered.data, attempts

    async def _call_retrying(
        self,
        endpoint: str,
        body: dict[str, Any] | None,
        attempts: Attempts,
        check: Callable[[Any], object] | None = None,
    ) -> Answered:
        async for attempt in self._retrying():
            with attempt:
                return await self._once(endpoint, body, attempts, check)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _once(
        self,
        endpoint: str,
        body: dict[str, Any] | None,
        attempts: Attempts,
        check: Callable[[Any], object] | None = None,
    ) -> Answered:
        ticket = await self.scheduler.acquire(
            input_tokens(body, self._tiktoken_model), self.output.expect(body)
        )
        started = time.monotonic()
        attempts.count += 1
        try:
            answered = Answered.parse(await self.provider.call(endpoint, body))
            if check is not None:
                try:
                    check(answered.data)
                except ValueError as exc:
                    raise invalid_response(str(exc)) from exc
        except UpstreamError as exc:
            attempts.failed(exc, started)
            self.scheduler.release(ticket)
            if exc.status == 429:
                self.scheduler.throttled(exc.retry_after)
            raise
        except BaseException:
            self.scheduler.release(ticket)
            raise
        usage = answered.usage
        self.scheduler.release(ticket, usage, answered.headers)
        self.scheduler.succeeded()
        if usage:
            self.output.observe(usage["completion_tokens"])
        return answered

    async def stream(self, endpoint: str, body: dict[str, Any], attempts: Attempts) -> AsyncIterator[bytes]:
        """The provider's event payloads; attempts are retried only until the first one arrives."""
        async for attempt in self._retrying():
            with attempt:
                events = self._stream_once(endpoint, body, attempts)
                first = await anext(events, None)
        if first is None:
            return
        attempts.first_event_at = time.time()
        yield first
        async for payload in events:
            yield payload

    async def _stream_once(
        self, endpoint: str, body: dict[str, Any], attempts: Attempts
    ) -> AsyncIterator[bytes]:
        ticket = await self.scheduler.acquire(
            input_tokens(body, self._tiktoken_model), self.output.expect(body)
        )
        started = time.monotonic()
        attempts.count += 1
        try:
            async for payload in self.provider.stream(endpoint, body):
                yield payload
        except UpstreamError as exc:
            attempts.failed(exc, started)
            if exc.status == 429:
                self.scheduler.throttled(exc.retry_after)
            raise
        finally:
            self.scheduler.release(ticket)
        self.scheduler.succeeded()

    async def close(self) -> None:
        """Close the provider."""
        await self.provider.close()


def torn_body(exc: Exception) -> UpstreamError:
    """502 for an answer that is not the JSON it claims to be (retryable: it may pass)."""
    return UpstreamError(502, f"upstream sent invalid JSON: {exc}", "upstream_bad_response", True)


def invalid_response(detail: str) -> UpstreamError:
    """502 for JSON that is not the answer asked for, e.g. too few choices (retryable: it may pass)."""
    return UpstreamError(
        502, f"upstream sent an unusable answer: {detail}", "upstream_invalid_response", True
    )


class BatchFailed(Exception):
    """A micro-batch's upstream call failed after its attempts; every member hears of it."""

    def __init__(self, error: UpstreamError, attempts: Attempts, size: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts
        self.size = size

    def refused_for_one_of_many(self) -> bool:
        """Whether the upstream refused a list of prompts (a 4xx no retry mends): maybe for one of them."""
        return self.size > 1 and not self.error.retryable and 400 <= self.error.status < 500


@dataclass(frozen=True)
class Answered:
    """A successful upstream answer: its JSON, and its bytes as orjson writes them.

    Re-serialising makes the bytes a client gets on a miss identical to what a
    rebuilt index returns on a hit.
    """

    data: Any
    body: bytes
    headers: Mapping[str, str]
    batched: bool = False

    @classmethod
    def parse(cls, reply: Reply) -> Answered:
        """Parse ``reply``; a body that is not JSON is a torn answer (502)."""
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError as exc:
            raise torn_body(exc) from exc
        return cls(data, orjson.dumps(data), reply.headers)

    @property
    def usage(self) -> dict[str, Any] | None:
        """The answer's ``usage`` object, if it has one whose counts can be believed."""
        return trusted_usage(self.data.get("usage") if isinstance(self.data, dict) else None)
