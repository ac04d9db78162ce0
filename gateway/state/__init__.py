"""State that must be one value for every gateway process: one small interface, two backends.

Every piece of shared state goes through :class:`State`:

- the response index (``index``): what a key was answered with;
- single-flight across processes (``claim`` / ``wait_for``): the first process
  to ask for a key calls the upstream, the others wait for its answer;
- rate limits (``limiter``): RPM/TPM buckets that hold for the whole fleet;
- per-run sample counters (``samples``).

:class:`LocalState` is what one gateway process always did: everything lives
in the process, and nothing imports a Redis client. ``gateway.state.redis``
(imported only when a config names ``backend: redis``) keeps the same things
in Redis, with the local state as its fallback while Redis is out of reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cache.index import ResponseIndex
from gateway.samples import SampleLedger

if TYPE_CHECKING:
    from gateway.config import ModelConfig, StateConfig


class IndexLike(Protocol):
    """What the pipeline asks of the response index."""

    async def aget(self, key: str) -> bytes | None: ...
    async def aset(self, key: str, body: bytes) -> None: ...
    def recent(self, key: str) -> bytes | None: ...
    def close(self) -> None: ...


class Claim(Protocol):
    """A process's claim on a key's upstream call, held until :meth:`release`."""

    async def release(self) -> None: ...


class SharedLimiter(Protocol):
    """Token buckets one fleet shares (see ``gateway.scheduler.Scheduler.share``)."""

    async def take(self, amounts: dict[str, float]) -> float | None:
        """0 when taken; else seconds to wait before asking again; None when the store is out of reach."""
        ...

    def adjust(self, deltas: dict[str, float]) -> None:
        """Refund (or charge) amounts in the background."""
        ...

    def cap(self, kind: str, remaining: float) -> None:
        """The upstream says only ``remaining`` is left of ``kind``."""
        ...

    def pause(self, seconds: float) -> None:
        """Pause every process's calls for ``seconds`` (a 429's Retry-After)."""
        ...


class State:
    """The local backend: everything in this process; also the interface every backend keeps."""

    backend = "local"
    shared = False  # whether other processes see what this one does

    def __init__(self, replicas: int = 1) -> None:
        self.replicas = replicas

    def index(self, local: ResponseIndex) -> IndexLike:
        """The index the pipeline uses, over this process's own on-disk index."""
        return local

    def samples(self, cache_dir: Path) -> SampleLedger:
        """The ledger of sample indices each run has taken."""
        return SampleLedger(cache_dir)

    def limiter(self, model: ModelConfig) -> SharedLimiter | None:
        """Buckets shared with other processes for ``model``; None: the scheduler's own are the limit."""
        return None

    async def claim(self, key: str) -> bytes | Claim | None:
        """Claim ``key``'s upstream call: a :class:`Claim` when this process is to make it.

        Else the fleet's answer (bytes), when another process stored one since
        this one looked; or None while another process holds the key (then
        :meth:`wait_for` its answer).
        """
        return _NO_CLAIM

    async def wait_for(self, key: str) -> bytes | None:
        """Another process's answer for ``key``; None when it gave up, died, or took too long."""
        return None

    def health(self) -> dict[str, Any]:
        """For ``/healthz`` and ``/metrics``: which backend, and whether state is shared right now."""
        detail: dict[str, Any] = {"backend": self.backend, "shared": self.shared}
        if self.replicas > 1:
            detail["per_process"] = PER_PROCESS
        return detail

    async def start(self) -> None:
        """Connect (a no-op here)."""

    async def close(self) -> None:
        """Disconnect (a no-op here)."""


# What is not shared between processes when state is local (or its store is down).
PER_PROCESS = (
    "single-flight, response memory tier, sample counters; "
    "rate limits are divided between processes (state.replicas)"
)


class _NoClaim:
    async def release(self) -> None:
        return None


_NO_CLAIM = _NoClaim()


def make_state(config: StateConfig) -> State:
    """The backend ``config`` names; Redis's client is imported only when it is the one."""
    if config.backend == "redis":
        from gateway.state.redis import RedisState

        return RedisState(config)
    return State(config.replicas)
