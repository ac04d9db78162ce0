"""Wake-ups for the fleet's waiters: one Redis pub/sub subscription per process, one event per waiter.

A process that finds another holding a key's lease waits for that holder's
answer. The holder's store (or release, when it gives up) publishes the
lease's name on ``<prefix>done`` when someone waited for it; this process's
one subscriber connection hears it and sets the events of its waiters on
that lease. A message can be lost (the subscription was down, or the
message came before the waiter's event was there): waiters therefore look
again after each wake-up and at least every ``state.wait_recheck_s``, so
a lost message only delays an answer, and a dead holder's expired lease
still ends the wait.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from gateway.state.redis import Link

log = logging.getLogger("gateway.state")

# How often the subscriber looks up from its socket to see whether Redis was lost and found again since it
# subscribed (the link's outages): then it subscribes again on a new connection.
LOOK_UP_EVERY_S = 1.0


def done_channel(prefix: str) -> str:
    """The channel a fleet's stores and releases announce a waited-for lease's end on."""
    return prefix + "done"


class Wakeups:
    """This process's one subscription to :func:`done_channel`; each message sets its lease's events."""

    def __init__(self, link: Link, prefix: str, retry_s: float) -> None:
        self.link = link
        self.channel = done_channel(prefix)
        self.retry_s = retry_s
        self.listening = False  # subscribed now: a waiter may count on being woken
        self.heard = 0  # messages received (for tests and /healthz)
        self._waiters: dict[str, list[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Subscribe in the background (and again whenever Redis was lost and is back)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._listen())

    def expect(self, lease: str) -> asyncio.Event:
        """An event set when ``lease``'s end is announced: taken *before* looking, so none falls between."""
        event = asyncio.Event()
        self._waiters.setdefault(lease, []).append(event)
        return event

    def forget(self, lease: str, event: asyncio.Event) -> None:
        """The waiter is done with ``event``."""
        events = self._waiters.get(lease)
        if events is not None and event in events:
            events.remove(event)
            if not events:
                del self._waiters[lease]

    def _wake(self, lease: str) -> None:
        for event in self._waiters.pop(lease, ()):
            event.set()

    def _wake_all(self) -> None:
        """Every waiter looks again: messages published while this process was not subscribed are lost."""
        for lease in list(self._waiters):
            self._wake(lease)

    async def _listen(self) -> None:
        while True:
            if not self.link.up:
                await asyncio.sleep(self.retry_s)
                continue
            pubsub = self.link.client.pubsub()
            outages = self.link.outages
            try:
                await pubsub.subscribe(self.channel)
                while self.link.outages == outages:
                    message = await pubsub.get_message(timeout=LOOK_UP_EVERY_S)
                    if message is not None:
                        self._handle(message)
            except (RedisError, OSError) as exc:
                log.debug("redis subscription to %s lost: %s", self.channel, exc)
            finally:
                self.listening = False
                await _close(pubsub)
            self._wake_all()
            await asyncio.sleep(self.retry_s)

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":  # (again): what was announced before it is lost, so look again
            self.listening = True
            self._wake_all()
        elif message["type"] == "message":
            self.heard += 1
            self._wake(message["data"].decode())

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._wake_all()


async def _close(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()
    except (RedisError, OSError):
        pass
