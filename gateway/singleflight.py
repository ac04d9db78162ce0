"""Single-flight: identical requests in flight at the same time share one upstream call (and its events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


_detached: set[asyncio.Task[object]] = set()


def run_detached(work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
    """Run ``work`` as a task no caller's cancellation reaches, kept alive until it is done.

    Its failure is delivered to whoever awaits the task; when nobody does (the
    one caller left, or had already been told through another channel) it is
    marked retrieved, so asyncio does not log "Task exception was never
    retrieved" with a traceback of a failure that was already handled.
    """
    task: asyncio.Task[T] = asyncio.ensure_future(work())  # type: ignore[arg-type]
    _detached.add(task)  # type: ignore[arg-type]
    task.add_done_callback(_settled)
    return task


def _settled(task: asyncio.Task[object]) -> None:
    _detached.discard(task)
    if not task.cancelled():
        task.exception()  # marks it retrieved; awaiting callers still get it raised


class SingleFlight(Generic[T]):
    """Runs at most one task per key; later callers with the same key await its result.

    The task runs detached from its callers: a caller that goes away (client
    disconnect, cancellation) does not cancel the work the others share.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}

    def join(self, key: str) -> asyncio.Task[T] | None:
        """The task already running for ``key``, if any."""
        return self._flights.get(key)

    def start(self, key: str, work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Start ``work`` as the flight for ``key``; it is forgotten once done."""
        task = run_detached(work)
        self._flights[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)


class Feed(Generic[T]):
    """The items of one streamed flight, for every reader: each reads from the start, then live.

    A streamed call's leader and its followers all read the same feed, so a
    follower's first event arrives when the leader's does, not after the
    whole answer. Items are kept until the flight ends (one answer's events).
    """

    def __init__(self) -> None:
        self.items: list[T] = []
        self._grown = asyncio.Event()

    def put(self, item: T) -> None:
        """Append ``item`` and wake every reader waiting for it."""
        self.items.append(item)
        self._grown.set()
        self._grown = asyncio.Event()

    async def read(self) -> AsyncIterator[T]:
        """Every item, from the first; waits for the next one until the reader stops."""
        position = 0
        while True:
            while position >= len(self.items):
                await self._grown.wait()
            yield self.items[position]
            position += 1
