"""Per-upstream scheduling: rate limits that adapt, bounded concurrency, a bounded queue.

One :class:`Scheduler` per upstream, so a provider that pushes back (429) slows
down only itself. Requests wait in FIFO order and leave the moment capacity
exists: a free concurrency slot, a request token and enough input/output
tokens. Buckets start full and refill continuously. Concurrency adapts by
additive increase / multiplicative decrease (AIMD) on 429s, and the upstream's
own ``x-ratelimit-remaining-*`` headers correct the buckets whenever it sends them.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.state import SharedLimiter

# Cap on how long an upstream's Retry-After or x-ratelimit-reset-* can pause us:
# a hostile or broken header must not stall a run for an hour.
MAX_PAUSE_S = 60.0


@dataclass(frozen=True)
class Limits:
    """What an upstream allows. ``None`` means unlimited."""

    rpm: float | None = None
    tpm: float | None = None  # input + output, for providers that count them together
    input_tpm: float | None = None
    output_tpm: float | None = None
    max_concurrency: int = 64
    max_queue: int = 1024


class TokenBucket:
    """A bucket of ``per_minute`` capacity that starts full and refills continuously."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is now)."""
        self._refill()
        # A request bigger than the whole bucket waits for a full bucket, then goes.
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, amount: float) -> None:
        """Spend ``amount`` (the level may go negative: a debt paid by waiting)."""
        self._refill()
        self.level -= amount

    def give_back(self, amount: float) -> None:
        """Refund an over-estimate (or charge an under-estimate, when negative)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def cap(self, remaining: float) -> None:
        """The upstream says only ``remaining`` is left: believe it, down to empty but never into debt.

        A claimed debt (``remaining < 0``) would take ``-remaining / rate``
        seconds to repay: one ``-100000000`` header would stall the bucket for
        hours. An empty bucket refills within a minute.
        """
        self._refill()
        self.level = min(self.level, max(0.0, remaining))


@dataclass
class Ticket:
    """What one admitted request took, to be settled when it ends."""

    input_tokens: float
    output_tokens: float
    released: bool = False
    shared: bool = False  # taken from the fleet's buckets (settled there too)


class Scheduler:
    """Admits requests to one upstream within its limits."""

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.requests = TokenBucket(limits.rpm) if limits.rpm else None
        self.tokens = TokenBucket(limits.tpm) if limits.tpm else None
        self.input_tokens = TokenBucket(limits.input_tpm) if limits.input_tpm else None
        self.output_tokens = TokenBucket(limits.output_tpm) if limits.output_tpm else None
        self.concurrency_limit = float(limits.max_concurrency)
        self.in_flight = 0
        self.waiting = 0
        self._paused_until = 0.0
        self._last_decrease = 0.0
        self._head = asyncio.Lock()  # FIFO: only the oldest waiter looks for capacity
        self._changed = asyncio.Event()
        self.shared: SharedLimiter | None = None

    def share(self, shared: SharedLimiter | None, replicas: int = 1) -> None:
        """Take RPM/TPM from ``shared`` (the fleet's buckets); this process's own buckets then hold
        ``1/replicas`` of each limit, for whenever the shared store is out of reach (or, with
        ``shared`` None, because ``replicas`` processes divide the limits between them)."""
        self.shared = shared
        if replicas > 1:
            for bucket in (self.requests, self.tokens, self.input_tokens, self.output_tokens):
                if bucket is not None:
                    bucket.capacity /= replicas
                    bucket.rate /= replicas
                    bucket.level = min(bucket.level, bucket.capacity)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for capacity."""
        return self.waiting

    async def acquire(self, input_tokens: float, output_tokens: float) -> Ticket:
        """Go now if there is capacity and nobody ahead; else queue (FIFO), or 429 when the queue is full."""
        if self.shared is not None:
            ticket = await self._acquire_shared(self.shared, input_tokens, output_tokens)
            if ticket is not None:
                return ticket
        if not self.waiting and self._delay(input_tokens, output_tokens) == 0.0:
            self._take(input_tokens, output_tokens)  # the fast path: no queue, no lock
            return Ticket(input_tokens, output_tokens)
        if self.waiting >= self.limits.max_queue:
            raise self._queue_full()
        self.waiting += 1
        try:
            async with self._head:
                while (delay := self._delay(input_tokens, output_tokens)) != 0.0:
                    self._changed.clear()
                    try:
                        await asyncio.wait_for(self._changed.wait(), delay)
                    except asyncio.TimeoutError:
                        pass  # a bucket has refilled or a pause has ended
                self._take(input_tokens, output_tokens)
        finally:
            self.waiting -= 1
        return Ticket(input_tokens, output_tokens)

    async def _acquire_shared(
        self, shared: SharedLimiter, input_tokens: float, output_tokens: float
    ) -> Ticket | None:
        """Queue (FIFO) for a local slot, then take the fleet's buckets; None: the store is out, go local."""
        if self.waiting >= self.limits.max_queue:
            raise self._queue_full()
        amounts = {"requests": 1.0, "tokens": input_tokens + output_tokens}
        amounts |= {"input_tokens": input_tokens, "output_tokens": output_tokens}
        self.waiting += 1
        try:
            async with self._head:
                while True:
                    while (delay := self._local_delay()) != 0.0:
                        self._changed.clear()
                        try:
                            await asyncio.wait_for(self._changed.wait(), delay)
                        except asyncio.TimeoutError:
                            pass
                    wait = await shared.take(amounts)
                    if wait is None:
                        return None
                    if wait == 0.0:
                        self.in_flight += 1
                        return Ticket(input_tokens, output_tokens, shared=True)
                    await asyncio.sleep(wait)
        finally:
            self.waiting -= 1

    def _local_delay(self) -> float | None:
        """What this process alone holds back: its pause and its concurrency limit."""
        pause = self._pause_left()
        if pause > 0:
            return pause
        return 0.0 if self.in_flight < int(self.concurrency_limit) else None

    def _queue_full(self) -> GatewayError:
        retry = max(1, round(self._pause_left() or 1))
        return GatewayError(
            429,
            f"upstream '{self.name}' queue is full ({self.limits.max_queue} waiting); retry later",
            "rate_limit_error",
            "queue_full",
            headers={"Retry-After": str(retry)},
        )

    def _pause_left(self) -> float:
        return max(0.0, self._paused_until - time.monotonic())

    def _delay(self, input_tokens: float, output_tokens: float) -> float | None:
        """0 when the request may go now; else seconds to wait (None: until a slot frees)."""
        waits = [self._pause_left()]
        if self.requests:
            waits.append(self.requests.wait_for(1))
        if self.tokens:
            waits.append(self.tokens.wait_for(input_tokens + output_tokens))
        if self.input_tokens:
            waits.append(self.input_tokens.wait_for(input_tokens))
        if self.output_tokens:
            waits.append(self.output_tokens.wait_for(output_tokens))
        longest = max(waits)
        if longest > 0:
            return longest
        return 0.0 if self.in_flight < int(self.concurrency_limit) else None

    def _take(self, input_tokens: float, output_tokens: float) -> None:
        self.in_flight += 1
        if self.requests:
            self.requests.take(1)
        if self.tokens:
            self.tokens.take(input_tokens + output_tokens)
        if self.input_tokens:
            self.input_tokens.take(input_tokens)
        if self.output_tokens:
            self.output_tokens.take(output_tokens)

    def release(
        self, ticket: Ticket, usage: Mapping[str, int] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Free the slot; refund estimates against real ``usage``; believe rate-limit ``headers``."""
        if ticket.released:
            return
        ticket.released = True
        self.in_flight -= 1
        if usage:
            extra_in = ticket.input_tokens - usage.get("prompt_tokens", ticket.input_tokens)
            extra_out = ticket.output_tokens - usage.get("completion_tokens", ticket.output_tokens)
            if ticket.shared and self.shared is not None:
                deltas = {"tokens": extra_in + extra_out, "input_tokens": extra_in}
                self.shared.adjust(deltas | {"output_tokens": extra_out})
            else:
                if self.tokens:
                    self.tokens.give_back(extra_in + extra_out)
                if self.input_tokens:
                    self.input_tokens.give_back(extra_in)
                if self.output_tokens:
                    self.output_tokens.give_back(extra_out)
        if headers:
            self._believe(headers)
        self._changed.set()

    def succeeded(self) -> None:
        """Additive increase: about one more slot per window of successes."""
        limit = self.limits.max_concurrency
        self.concurrency_limit = min(limit, self.concurrency_limit + 1.0 / max(1.0, self.concurrency_limit))
        self._changed.set()

    def throttled(self, retry_after: float | None) -> None:
        """Multiplicative decrease on a 429 (once per burst), and pause as long as asked."""
        now = time.monotonic()
        if now - self._last_decrease > 1.0:
            self.concurrency_limit = max(1.0, self.concurrency_limit / 2)
            self._last_decrease = now
        if retry_after:
            self._paused_until = max(self._paused_until, now + min(retry_after, MAX_PAUSE_S))
            if self.shared is not None:  # every process of the fleet waits, not only this one
                self.shared.pause(min(retry_after, MAX_PAUSE_S))

    def _believe(self, headers: Mapping[str, str]) -> None:
        """Believe the upstream, within reason: remaining budgets cap our buckets; an exhausted one pauses.

        Headers are distrusted: a value that is not a finite number is ignored,
        a remaining budget counts as at least zero, and a reset pauses for at
        most ``MAX_PAUSE_S``.
        """
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens or self.input_tokens)):
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is None:
                continue
            remaining = max(0.0, remaining)
            if bucket is not None:
                bucket.cap(remaining)
            if self.shared is not None:
                self.shared.cap(kind if kind == "requests" else "tokens", remaining)
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if remaining == 0 and reset:  # even with no limit configured, the upstream knows best
                pause_until = time.monotonic() + min(max(0.0, reset), MAX_PAUSE_S)
                self._paused_until = max(self._paused_until, pause_until)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value: ``"20ms"``, ``"1s"``, ``"6m0s"`` or a bare number."""
    if not value:
        return None
    bare = _number(value)
    if bare is not None:
        return bare
    parts = _DURATION_PART.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _number(value: str | None) -> float | None:
    """``value`` as a finite float, else None (``"nan"`` and ``"inf"`` are not numbers a header may claim)."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None
