"""One configured model's way upstream: scheduler → retries → (micro-batcher) → provider.

Retries (tenacity) wrap each whole attempt, scheduling included, so a retried
request queues behind others like anyone else. Only failures that may pass
are retried: 408, 429, 5xx, timeouts, dropped connections and torn bodies;
never another 4xx. Every attempt is noted for the record, and the client
sees an error only after the last one.

Secrets are masked here, where upstream bytes enter the gateway: an answer,
each stream event and each error message is scrubbed before anything
records, indexes or sends it, so a key an upstream echoes is never stored and
never served to a later hit.
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

from cache.validity import invalid_reason
from gateway.batcher import MicroBatcher, choices_by_prompt, single_prompt
from gateway.config import ModelConfig
from gateway.endpoints import BATCHABLE_ENDPOINTS
from gateway.errors import UpstreamError, not_supported
from gateway.providers.base import Provider, Reply
from gateway.redaction import Redactor
from gateway.scheduler import MAX_PAUSE_S, Scheduler
from gateway.streaming import carries_answer
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

    def failed(self, error: UpstreamError, started: float, body: bytes | None = None) -> None:
        """Note a failed try; ``body`` is what an invalid answer said (kept, bounded, for the record)."""
        failure: dict[str, Any] = {
            "status": error.status,
            "code": error.code,
            "message": error.message,
            "ms": round((time.monotonic() - started) * 1000, 3),
        }
        if body is not None:
            failure["body"] = body[:KEPT_BODY_BYTES].decode("utf-8", "replace")
        self.errors.append(failure)


# Responses API events that mean the generation failed.
_FAILED = ("error", "response.failed")

# How much of an invalid answer a record keeps: enough to see what went wrong.
KEPT_BODY_BYTES = 64 * 1024


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retryable


class Upstream:
    """Calls one model's provider within its limits, retrying what may pass."""

    def __init__(self, model: ModelConfig, provider: Provider, redactor: Redactor | None = None) -> None:
        self.model = model
        self.provider = provider
        self.redactor = redactor if redactor is not None else Redactor()
        self.scheduler = Scheduler(model.name, model.limits())
        self.output = OutputEstimate()
        self._backoff = wait_exponential_jitter(
            multiplier=model.retries.initial_s, max=model.retries.max_s, jitter=model.retries.initial_s
        )
        self._tiktoken_model = model.target_model if provider.tiktoken else None
        batching = model.batching
        self.batcher = (
            MicroBatcher(batching.window_ms / 1000, batching.max_batch, self._send_batch)
            if batching
            else None
        )

    def _check_served(self, endpoint: str) -> None:
        """501 before any call for an endpoint the provider says it does not serve."""
        served = self.provider.endpoints
        if served is not None and endpoint not in served:
            raise not_supported(endpoint, self.provider.name)

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
        self._check_served(endpoint)
        if self.batcher and endpoint in BATCHABLE_ENDPOINTS and body:
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
        # The first attempt runs bare: most calls succeed at once, and building tenacity's
        # retry state costs a miss more than the call's own bookkeeping.
        try:
            return await self._once(endpoint, body, attempts, check)
        except UpstreamError as exc:
            if not exc.retryable or self.model.retries.attempts <= 1:
                raise
            first: UpstreamError | None = exc
        # Tenacity takes over from here, its attempt 1 being the failure above: same backoff,
        # same stop, same counting as if it had run every attempt itself.
        async for attempt in self._retrying():
            with attempt:
                if first is not None:
                    failed, first = first, None
                    raise failed
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
            answered = Answered.parse(await self.provider.call(endpoint, body), self.redactor.scrub)
            if check is not None:
                try:
                    check(answered.data)
                except ValueError as exc:
                    raise invalid_answer(endpoint, str(exc)) from exc
        except UpstreamError as exc:
            self._scrub_error(exc)
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
        reason = invalid_reason(endpoint, answered.data)
        if reason is not None:  # paid for, but not an answer: kept in the record, retried, never cached
            error = invalid_answer(endpoint, reason)
            attempts.failed(error, started, answered.body)
            raise error
        self.scheduler.succeeded()
        if usage:
            self.output.observe(usage["completion_tokens"])
        return answered

    async def stream(self, endpoint: str, body: dict[str, Any], attempts: Attempts) -> AsyncIterator[Event]:
        """The provider's events, parsed; attempts are retried until the answer starts.

        The answer starts with the first event that carries a choice; events
        before it (a usage-only chunk) are held back, so a stream with no answer
        in it is a failed attempt the client never saw, and is tried again. An
        ``error`` event is an upstream failure wherever it comes (vLLM ends a
        failing generation with one and then ``[DONE]``), never part of an answer.
        """
        self._check_served(endpoint)
        async for attempt in self._retrying():
            with attempt:
                events = self._stream_once(endpoint, body, attempts)
                held = []
                async for event in events:  # _stream_once raises if none carries a choice
                    held.append(event)
                    if carries_answer(endpoint, event.chunk):
                        break
        attempts.first_event_at = time.time()
        for event in held:
            yield event
        async for event in events:
            yield event

    async def _stream_once(
        self, endpoint: str, body: dict[str, Any], attempts: Attempts
    ) -> AsyncIterator[Event]:
        ticket = await self.scheduler.acquire(
            input_tokens(body, self._tiktoken_model), self.output.expect(body)
        )
        started = time.monotonic()
        attempts.count += 1
        answered = False
        try:
            async for payload in self.provider.stream(endpoint, body):
                event = Event.parse(payload, self.redactor.scrub if self.redactor else None)
                answered = answered or carries_answer(endpoint, event.chunk)
                yield event
            if not answered:
                raise invalid_answer(endpoint, "the stream carried no choice")
        except UpstreamError as exc:
            self._scrub_error(exc)
            attempts.failed(exc, started)
            if exc.status == 429:
                self.scheduler.throttled(exc.retry_after)
            raise
        finally:
            self.scheduler.release(ticket)
        self.scheduler.succeeded()

    def scrub(self, body: bytes) -> bytes:
        """JSON ``body`` with every known secret masked (for answers assembled from scrubbed events,
        since a key can be split across two of them)."""
        return self.redactor.scrub(body)

    def _scrub_error(self, error: UpstreamError) -> None:
        """Mask secrets in an upstream's error message (and the exception's own text, for tracebacks)."""
        error.message = self.redactor.scrub_text(error.message)
        error.args = (error.message,)

    async def close(self) -> None:
        """Close the provider."""
        await self.provider.close()


def torn_body(exc: Exception) -> UpstreamError:
    """502 for an answer that is not the JSON it claims to be (retryable: it may pass)."""
    return UpstreamError(502, f"upstream sent invalid JSON: {exc}", "upstream_bad_response", True)


def invalid_answer(endpoint: str, reason: str) -> UpstreamError:
    """502 for a 200 that is not a complete answer of ``endpoint`` (retryable: it may pass)."""
    return UpstreamError(
        502, f"upstream sent no valid {endpoint} answer: {reason}", "upstream_invalid_response", True
    )


def stream_error(chunk: dict[str, Any]) -> UpstreamError:
    """502 for an ``error`` event inside a stream, with the upstream's message."""
    detail = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
    message = detail.get("message") if isinstance(detail, dict) else None
    return UpstreamError(
        502, f"upstream stream failed: {message or 'an error event'}", "upstream_stream_error", True
    )


@dataclass(frozen=True)
class Event:
    """One server-sent event of a streamed answer: its bytes as sent, and its JSON."""

    payload: bytes
    chunk: dict[str, Any]

    @classmethod
    def parse(cls, payload: bytes, scrub: Callable[[bytes], bytes] | None = None) -> Event:
        """Parse ``payload``: invalid JSON is a torn stream, an error event an upstream failure.

        With ``scrub``, secrets are masked on orjson's canonical form of the
        event (an upstream may escape a key's characters any way JSON allows);
        the upstream's own bytes pass on when nothing was masked.
        """
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise torn_body(exc) from exc
        if scrub is not None:
            canonical = orjson.dumps(chunk)
            scrubbed = scrub(canonical)
            if scrubbed is not canonical:
                payload, chunk = scrubbed, orjson.loads(scrubbed)
        if not isinstance(chunk, dict):
            raise invalid_answer("stream", f"an event is {type(chunk).__name__}, not an object")
        if chunk.get("error") is not None or chunk.get("object") == "error" or chunk.get("type") in _FAILED:
            raise stream_error(chunk)
        return cls(payload, chunk)


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
    def parse(cls, reply: Reply, scrub: Callable[[bytes], bytes] | None = None) -> Answered:
        """Parse ``reply``, masking secrets with ``scrub``; a body that is not JSON is a torn answer (502)."""
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError as exc:
            raise torn_body(exc) from exc
        body = orjson.dumps(data)
        scrubbed = scrub(body) if scrub is not None else body
        if scrubbed is not body:  # a secret was masked: the parsed answer must say so too
            data = orjson.loads(scrubbed)
        return cls(data, scrubbed, reply.headers)

    @property
    def usage(self) -> dict[str, Any] | None:
        """The answer's ``usage`` object, if it has one whose counts can be believed."""
        return trusted_usage(self.data.get("usage") if isinstance(self.data, dict) else None)
