"""The Redis backend of ``gateway.state``: one index, one single-flight, one set of limits for a fleet.

Imported only when a config says ``state: {backend: redis, url: ...}``.

Every Redis call goes through :class:`Link`, which bounds it by
``state.timeout_s``: a Redis that is down or slower than that makes the call
fall back to this process's own state (the on-disk index, per-process
single-flight, the scheduler's local buckets at ``1/replicas`` of the limits,
the local sample ledger), logs it once, shows it in ``/healthz`` and
``/metrics``, and reconnects in the background. Nothing that must be kept
depends on Redis: records are this process's own shards, written before any
answer is acknowledged.

Round trips: a hit in the memory tier costs none; any other lookup one
(``MGET`` of every key asked during the same loop turn); answers are written
once each, batched per loop turn into one pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache.index import ResponseIndex
from gateway.samples import SampleLedger
from gateway.singleflight import run_detached
from gateway.state import Claim, IndexLike, SharedLimiter, State

if TYPE_CHECKING:
    from gateway.config import ModelConfig, StateConfig

log = logging.getLogger("gateway.state")

In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")

RECONNECT_EVERY_S = 0.5
MAX_CONNECTIONS = 32
# The shortest and longest pause between two looks for another process's answer.
POLL_FIRST_S, POLL_MAX_S = 0.005, 0.1

# Token buckets taken atomically: all of them or none. KEYS: one hash per bucket, then the pause key.
# ARGV: per bucket capacity, refill per second, amount. Returns the seconds to wait (0: taken), as a
# string (Lua numbers leave Redis as integers). Redis's own clock, so every process agrees on "now".
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = redis.call('PTTL', KEYS[#KEYS])
if paused > 0 then return tostring(paused / 1000) end
local n = #KEYS - 1
local levels = {}
local longest = 0
for i = 1, n do
  local cap, rate, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local s = redis.call('HMGET', KEYS[i], 'level', 'stamp')
  local level = tonumber(s[1]) or cap
  local stamp = tonumber(s[2]) or now
  level = math.min(cap, level + math.max(0, now - stamp) * rate)
  levels[i] = level
  local missing = math.min(amount, cap) - level
  if missing > 0 and missing / rate > longest then longest = missing / rate end
end
for i = 1, n do
  local cap, rate, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local level = levels[i]
  if longest == 0 then level = level - amount end
  redis.call('HSET', KEYS[i], 'level', tostring(level), 'stamp', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate * 1000) + 60000)
end
return tostring(longest)
"""

# Refill, then add ARGV[3] (a refund, or a charge when negative) or, when ARGV[4] is given, cap the
# level at it (an upstream's x-ratelimit-remaining). ARGV[1], ARGV[2]: capacity and refill per second.
ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'level', 'stamp')
local level = tonumber(s[1]) or cap
local stamp = tonumber(s[2]) or now
level = math.min(cap, level + math.max(0, now - stamp) * rate)
if ARGV[4] then level = math.min(level, tonumber(ARGV[4]))
else level = math.min(cap, level + tonumber(ARGV[3])) end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 60000)
return 1
"""

# Pause every process for ARGV[1] ms, unless a longer pause is already set.
PAUSE = (
    "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then "
    "redis.call('SET', KEYS[1], 1, 'PX', ARGV[1]) end return 1"
)

# Renew or drop a lease only while it is still ours (a lease that expired may be someone else's now).
RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

# The lowest sample index of a request not in its run's set, added to it. KEYS[1]: the set.
TAKE_SAMPLE = """
local i = 0
while redis.call('SISMEMBER', KEYS[1], i) == 1 do i = i + 1 end
redis.call('SADD', KEYS[1], i)
return i
"""


class Link:
    """The connection to Redis, and whether it is usable now.

    A failed or slow call marks it down (logged once) and returns the
    caller's fallback; while down no call is tried, and a background task
    pings until Redis answers again.
    """

    def __init__(self, config: StateConfig) -> None:
        assert config.url is not None
        self.url = config.url
        self.timeout_s = config.timeout_s
        # A bounded pool: a burst of requests queues for a connection rather than opening hundreds.
        pool = aioredis.BlockingConnectionPool.from_url(
            config.url,
            max_connections=MAX_CONNECTIONS,
            timeout=config.timeout_s,
            socket_timeout=config.timeout_s,
            socket_connect_timeout=config.timeout_s,
        )
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.up = False
        self.fallbacks = 0  # calls answered from local state because Redis was out of reach
        self.outages = 0
        self.last_error: str | None = None
        self._reconnecting: asyncio.Task[None] | None = None

    async def call(self, work: Callable[[aioredis.Redis], Awaitable[Any]], fallback: Any) -> Any:
        """``work(client)``, or ``fallback`` when Redis is down, slow, or fails."""
        if not self.up:
            self.fallbacks += 1
            return fallback
        try:
            return await asyncio.wait_for(work(self.client), self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.down(exc)
            self.fallbacks += 1
            return fallback

    def down(self, exc: BaseException) -> None:
        """Mark Redis unusable and start reconnecting."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.up:
            self.outages += 1
            log.warning(
                "redis at %s is out of reach (%s): falling back to this process's own state "
                "(per-process single-flight, local limits at a share, local index) until it is back",
                self.url,
                self.last_error,
            )
        self.up = False
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def connect(self) -> None:
        """Try once now; on failure keep trying in the background (the gateway serves meanwhile)."""
        try:
            await asyncio.wait_for(self.client.ping(), self.timeout_s * 4)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.up = True  # so down() logs the outage
            self.down(exc)
            return
        self.up = True
        log.info("shared state on redis at %s", self.url)

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_EVERY_S)
            try:
                await asyncio.wait_for(self.client.ping(), self.timeout_s * 4)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            self.up = True
            log.warning("redis at %s is back: state is shared again", self.url)
            return

    async def close(self) -> None:
        """Stop reconnecting and close the connections."""
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        await self.client.aclose()


class _Turn(Generic[In, Out]):
    """Everything submitted during one loop turn goes to Redis as one call (one round trip)."""

    def __init__(self, run: Callable[[list[In]], Awaitable[list[Out]]]) -> None:
        self._run = run
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []

    async def submit(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Out] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((item, done))
        return await done

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        work = asyncio.ensure_future(self._run([item for item, _ in batch]))
        work.add_done_callback(lambda finished: _deliver(batch, finished))


def _deliver(batch: list[tuple[Any, asyncio.Future[Any]]], finished: asyncio.Future[list[Any]]) -> None:
    error = None if finished.cancelled() else finished.exception()
    for position, (_, done) in enumerate(batch):
        if done.done():
            continue
        if finished.cancelled():
            done.cancel()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(finished.result()[position])


def index_prefix(prefix: str) -> str:
    """What a fleet's Redis names its index entries with: this plus the request key."""
    return prefix + "idx:"


class RedisIndexFiller:
    """Writes index entries to a Redis for ``gateway cache rebuild``: batched, with bounded memory.

    Synchronous (the rebuild is a batch job): entries are held until
    ``batch_bytes`` of bodies or ``batch_entries`` entries are pending, then
    sent as one ``MSET``. Unlike the gateway's :class:`Link`, a Redis that is
    out of reach is an error here: a rebuild that silently filled nothing
    would leave the fleet paying for answers it has.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        batch_bytes: int = 8 * 2**20,
        batch_entries: int = 1000,
        timeout_s: float = 30.0,
    ) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.client.ping()  # fail now, before the rebuild's passes over the records
        self.names = index_prefix(prefix)
        self.batch_bytes = batch_bytes
        self.batch_entries = batch_entries
        self.written = 0
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0

    def set(self, key: str, body: bytes) -> None:
        """Queue ``body`` under ``key``; sends the batch once it is full."""
        self._pending[self.names + key] = body
        self._pending_bytes += len(body)
        if self._pending_bytes >= self.batch_bytes or len(self._pending) >= self.batch_entries:
            self.flush()

    def flush(self) -> None:
        """Send what is pending (one ``MSET``)."""
        if self._pending:
            self.client.mset(self._pending)
            self.written += len(self._pending)
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> None:
        """Close the connection."""
        self.client.close()


class RedisIndex:
    """The response index with Redis behind this process's memory tier, and its own disk index behind that."""

    def __init__(self, local: ResponseIndex, link: Link, prefix: str) -> None:
        self.local = local
        self.link = link
        self.prefix = index_prefix(prefix)
        self._gets: _Turn[str, bytes | None] = _Turn(self._mget)
        self._sets: _Turn[tuple[str, bytes], bool] = _Turn(self._mset)

    async def aget(self, key: str) -> bytes | None:
        """Memory tier (no round trip), else Redis (one), else this process's disk index."""
        body = self.local.recent(key)
        if body is not None:
            return await self.local.aget(key)  # the memory tier, refreshed in its order
        body = await self._gets.submit(key)
        if body is not None:
            self.local.remember(key, body)
            return body
        body = await self.local.aget(key)
        if body is not None and self.link.up:  # known here but not to the fleet (Redis lost it): share it
            run_detached(lambda: self._sets.submit((key, body)))
        return body

    async def aset(self, key: str, body: bytes) -> None:
        """Store on this process's disk and in Redis (the whole turn's answers in one pipeline)."""
        await self.local.aset(key, body)
        await self._sets.submit((key, body))

    def recent(self, key: str) -> bytes | None:
        """The memory tier only."""
        return self.local.recent(key)

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        names = [self.prefix + key for key in keys]
        return await self.link.call(lambda r: r.mget(names), [None] * len(keys))

    async def _mset(self, items: list[tuple[str, bytes]]) -> list[bool]:
        mapping = {self.prefix + key: body for key, body in items}
        stored = await self.link.call(lambda r: r.mset(mapping), False)
        return [bool(stored)] * len(items)

    def close(self) -> None:
        """Close this process's disk index (the Redis link is closed with the state)."""
        self.local.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)  # len, memory_tier_bytes, get, set... of the local index


class Lease:
    """A key's single-flight lease, renewed while its call runs: outlives a slow call, not a dead holder."""

    def __init__(self, link: Link, name: str, token: str, ttl_ms: int) -> None:
        self.link = link
        self.name = name
        self.token = token
        self.ttl_ms = ttl_ms
        self._renewing = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            await self.link.call(lambda r: r.eval(RENEW, 1, self.name, self.token, self.ttl_ms), 0)

    async def release(self) -> None:
        """Give the lease up (only if still ours): waiting processes move on at once."""
        self._renewing.cancel()
        await self.link.call(lambda r: r.eval(RELEASE, 1, self.name, self.token), 0)


class RedisLimiter:
    """A model's RPM/TPM buckets in Redis, taken atomically by one script (:data:`TAKE`)."""

    def __init__(self, link: Link, prefix: str, model: ModelConfig) -> None:
        self.link = link
        base = f"{prefix}limit:{model.name}:"
        per_minute = {"requests": model.rpm, "tokens": model.tpm}
        per_minute |= {"input_tokens": model.input_tpm, "output_tokens": model.output_tpm}
        self.buckets = {kind: (base + kind, limit) for kind, limit in per_minute.items() if limit}
        self.pause_key = base + "pause"

    async def take(self, amounts: dict[str, float]) -> float | None:
        """Take every bucket's amount or none: 0 when taken, else seconds to wait; None if Redis is out."""
        kinds = [kind for kind in self.buckets if kind in amounts]
        keys = [self.buckets[kind][0] for kind in kinds] + [self.pause_key]
        args: list[float] = []
        for kind in kinds:
            limit = self.buckets[kind][1]
            args += [limit, limit / 60.0, amounts[kind]]
        waited = await self.link.call(lambda r: r.eval(TAKE, len(keys), *keys, *args), None)
        return None if waited is None else float(waited)

    def adjust(self, deltas: dict[str, float]) -> None:
        """Refund over-estimates (or charge under-estimates) in the background."""
        for kind, delta in deltas.items():
            if kind in self.buckets and delta:
                self._script(kind, delta)

    def cap(self, kind: str, remaining: float) -> None:
        """Believe the upstream's remaining budget for every process."""
        if kind in self.buckets:
            self._script(kind, 0.0, remaining)

    def pause(self, seconds: float) -> None:
        """Every process waits ``seconds`` before its next call (a longer pause already set stands)."""
        ms = max(1, int(seconds * 1000))
        run_detached(lambda: self.link.call(lambda r: r.eval(PAUSE, 1, self.pause_key, ms), None))

    def _script(self, kind: str, delta: float, remaining: float | None = None) -> None:
        name, limit = self.buckets[kind]
        args: list[float] = [limit, limit / 60.0, delta] + ([remaining] if remaining is not None else [])
        run_detached(lambda: self.link.call(lambda r: r.eval(ADJUST, 1, name, *args), None))


class RedisSampleLedger(SampleLedger):
    """Sample indices taken in Redis (one set per run and request), so the fleet hands each out once.

    A run's set is seeded from this process's reading of the run's records the
    first time it sees the run (so what any process recorded stays taken);
    while Redis is out of reach the local ledger answers.
    """

    def __init__(self, cache_dir: Path, link: Link, prefix: str) -> None:
        super().__init__(cache_dir)
        self.link = link
        self.prefix = prefix + "samples:"
        self._seeded: set[str] = set()

    def _name(self, run_id: str, key: str) -> str:
        return f"{self.prefix}{run_id}:{key}"

    async def _seed(self, run_id: str) -> bool:
        taken = await self._taken(run_id)
        if run_id in self._seeded:
            return True

        async def push(r: aioredis.Redis) -> bool:
            async with r.pipeline(transaction=False) as pipe:
                for key, indices in taken.items():
                    if indices:
                        pipe.sadd(self._name(run_id, key), *indices)
                await pipe.execute()
            return True

        if await self.link.call(push, False):
            self._seeded.add(run_id)
            return True
        return False

    async def take(self, run_id: str, key: str) -> int:
        """The lowest index of ``key`` no process of the fleet has taken in this run."""
        if await self._seed(run_id):
            index = await self.link.call(lambda r: r.eval(TAKE_SAMPLE, 1, self._name(run_id, key)), None)
            if index is not None:
                (await self._taken(run_id))[key].add(int(index))
                return int(index)
        return await super().take(run_id, key)

    async def pin(self, run_id: str, key: str, index: int) -> None:
        """Mark ``index`` taken for the fleet."""
        await super().pin(run_id, key, index)
        if await self._seed(run_id):
            await self.link.call(lambda r: r.sadd(self._name(run_id, key), index), None)

    def give_back(self, run_id: str, key: str, index: int) -> None:
        """Return a failed request's index to the fleet (in the background)."""
        super().give_back(run_id, key, index)
        run_detached(lambda: self.link.call(lambda r: r.srem(self._name(run_id, key), index), None))


class RedisState(State):
    """Shared state in Redis, with this process's own state as the fallback."""

    backend = "redis"

    def __init__(self, config: StateConfig) -> None:
        super().__init__(config.replicas)
        self.config = config
        self.link = Link(config)
        self.prefix = config.prefix
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @property
    def shared(self) -> bool:  # type: ignore[override]
        return self.link.up

    def index(self, local: ResponseIndex) -> IndexLike:
        return RedisIndex(local, self.link, self.prefix)

    def samples(self, cache_dir: Path) -> SampleLedger:
        return RedisSampleLedger(cache_dir, self.link, self.prefix)

    def limiter(self, model: ModelConfig) -> SharedLimiter | None:
        limiter = RedisLimiter(self.link, self.prefix, model)
        return limiter if limiter.buckets else None

    async def claim(self, key: str) -> Claim | None:
        """A lease on ``key`` (SET NX PX); None when another process holds one. Redis out: ours."""
        name = f"{self.prefix}lease:{key}"
        ttl_ms = int(self.config.lease_s * 1000)
        taken = await self.link.call(lambda r: r.set(name, self.owner, nx=True, px=ttl_ms), True)
        return Lease(self.link, name, self.owner, ttl_ms) if taken else None

    async def wait_for(self, key: str) -> bytes | None:
        """Poll for the holder's answer (one round trip a look, backing off) while its lease lives.

        None once the lease is gone without an answer (the holder failed, or
        died and its lease expired), Redis is out of reach, or ``wait_s`` passed:
        the caller then tries to claim the key itself.
        """
        entry, lease = index_prefix(self.prefix) + key, f"{self.prefix}lease:{key}"
        deadline = time.monotonic() + self.config.wait_s
        pause = POLL_FIRST_S
        while time.monotonic() < deadline:
            found = await self.link.call(lambda r: r.mget([entry, lease]), None)
            if found is None:
                return None
            body, holder = found
            if isinstance(body, bytes):
                return body
            if holder is None:
                return None
            await asyncio.sleep(pause)
            pause = min(POLL_MAX_S, pause * 2)
        return None

    def health(self) -> dict[str, Any]:
        detail = super().health()
        detail |= {"url": _without_password(self.link.url), "fallbacks": self.link.fallbacks}
        detail["outages"] = self.link.outages
        if not self.link.up:
            detail["per_process"] = "everything, until redis is back: " + (self.link.last_error or "")
        return detail

    async def start(self) -> None:
        await self.link.connect()

    async def close(self) -> None:
        await self.link.close()


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
