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
(``MGET`` of every key asked during the same loop turn). A miss costs three:
that lookup; a claim that looks the key up again and, when it is still
absent, takes its lease in the same script (:data:`CLAIM`); and one script
that stores the answer and drops the lease (:data:`STORE`). Claims and
stores are batched per loop turn, like lookups.

A process that finds another holding a key's lease waits for it without
polling: its claim marks the key waited-for, and the holder's store (or
release) publishes the key's end in the same script, which the waiting
process hears on its one subscription (:mod:`gateway.state.wakeups`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from cache.index import ResponseIndex
from gateway.samples import SampleLedger
from gateway.singleflight import run_detached
from gateway.state import Claim, IndexLike, SharedLimiter, State
from gateway.state.wakeups import Wakeups, done_channel

if TYPE_CHECKING:
    from gateway.config import ModelConfig, StateConfig

log = logging.getLogger("gateway.state")

In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")

RECONNECT_EVERY_S = 0.5
MAX_CONNECTIONS = 32
# The pause between two looks for another process's answer while this process is not subscribed to the
# announcements of answers (Redis just came back): with the subscription, ``state.wait_recheck_s``.
UNSUBSCRIBED_POLL_S = 0.1

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

# A lease's value is its holder's token; a claim that finds the lease held appends " waited" to it (the
# scripts below spell it out), so the holder's store or release announces the lease's end only when
# some process waits for it (none for a miss nobody else asked for), and the mark lives as the lease does.
# Each script takes a lease as its holder's when its value is the token, marked or not.

# Renew or drop a lease only while it is still ours (a lease that expired may be someone else's now).
# Dropping a waited-for lease announces it on ARGV[2] (message: the lease's name), as STORE does.
RENEW = (
    "local v = redis.call('GET', KEYS[1]) if v == ARGV[1] or v == ARGV[1] .. ' waited' then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
RELEASE = """
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] and v ~= ARGV[1] .. ' waited' then return 0 end
redis.call('DEL', KEYS[1])
if v ~= ARGV[1] then redis.call('PUBLISH', ARGV[2], KEYS[1]) end
return 1
"""

# Claim keys' upstream calls. KEYS: per key its index entry, then its lease; ARGV: per key the token
# its lease would carry, then the lease's ms. Per key: its answer when the fleet has one (so a claim
# is also the last lookup, in the same trip), else 1 when this call took the lease, else 0 (another
# holds it: then the key is marked waited-for, so that its holder announces its end). One script: no
# process can store an answer and drop its lease between the two looks.
CLAIM = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local body = redis.call('GET', KEYS[2*i-1])
  if body then out[i] = body
  elseif redis.call('SET', KEYS[2*i], ARGV[i], 'NX', 'PX', ARGV[n+1]) then out[i] = 1
  else
    local holder = redis.call('GET', KEYS[2*i])
    if holder and string.sub(holder, -7) ~= ' waited' then
      redis.call('SET', KEYS[2*i], holder .. ' waited', 'XX', 'KEEPTTL')
    end
    out[i] = 0
  end
end
return out
"""

# Store answers and drop the leases held for them, in one trip and in that order: a waiter that sees
# a lease gone finds the answer. KEYS: n index entries, then the leases; ARGV[1]: n, then the n
# bodies, then each lease's token (a lease that expired and was taken by another stays theirs), then the
# channel on which a dropped lease some process waited for is announced (in the same trip: a waiter
# wakes at once instead of polling; see gateway.state.wakeups).
STORE = """
local n = tonumber(ARGV[1])
for i = 1, n do redis.call('SET', KEYS[i], ARGV[i+1]) end
for i = n + 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v == ARGV[i+1] or v == ARGV[i+1] .. ' waited' then
    redis.call('DEL', KEYS[i])
    if v ~= ARGV[i+1] then redis.call('PUBLISH', ARGV[#ARGV], KEYS[i]) end
  end
end
return n
"""

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
        self._scripts: dict[str, AsyncScript] = {}

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

    def script(self, source: str) -> AsyncScript:
        """``source`` as a script sent by its SHA (loaded again when Redis has forgotten it)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

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

    def __init__(self, local: ResponseIndex, link: Link, prefix: str, leases: dict[str, Lease]) -> None:
        self.local = local
        self.link = link
        self.prefix = index_prefix(prefix)
        self.leases = leases  # this process's held leases: an answer's write also drops its key's
        self.channel = done_channel(prefix)
        self._gets: _Turn[str, bytes | None] = _Turn(self._mget)
        self._sets: _Turn[tuple[str, bytes], bool] = _Turn(self._store)

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

    async def _store(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """The turn's answers, and the release of the leases held for them, in one script (:data:`STORE`)."""
        entries = {self.prefix + key: body for key, body in items}
        leases = [lease for lease in {key: self.leases.get(key) for key, _ in items}.values() if lease]
        keys = [*entries, *(lease.name for lease in leases)]
        args: list[bytes | str | int] = [len(entries), *entries.values(), *(lease.token for lease in leases)]
        args.append(self.channel)
        stored = await self.link.call(lambda r: self.link.script(STORE)(keys, args, r), None)
        if stored is not None:
            for lease in leases:
                lease.dropped()  # its holder's release needs no trip of its own
        return [stored is not None] * len(items)

    def close(self) -> None:
        """Close this process's disk index (the Redis link is closed with the state)."""
        self.local.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)  # len, memory_tier_bytes, get, set... of the local index


class Lease:
    """A key's single-flight lease, renewed while its call runs: outlives a slow call, not a dead holder.

    Registered in ``held`` (by key) while held, so that storing the key's
    answer drops the lease in the same trip (:meth:`RedisIndex._store`).
    """

    def __init__(
        self, link: Link, key: str, name: str, token: str, ttl_ms: int, held: dict[str, Lease], channel: str
    ) -> None:
        self.link = link
        self.key = key
        self.name = name
        self.channel = channel  # where giving the lease up is announced, when someone waits for it
        self.token = token
        self.ttl_ms = ttl_ms
        self.held = held
        held[key] = self
        self._renewing = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            await self.link.call(lambda r: r.eval(RENEW, 1, self.name, self.token, self.ttl_ms), 0)

    def dropped(self) -> None:
        """The lease is gone from Redis (its answer was stored): stop renewing, forget it."""
        self._renewing.cancel()
        if self.held.get(self.key) is self:
            del self.held[self.key]

    async def release(self) -> None:
        """Give the lease up (only if still ours): waiting processes move on at once.

        No trip when storing the answer already dropped it; one when the call
        failed (nothing stored) or the store could not reach Redis.
        """
        if self.held.get(self.key) is not self:
            return
        self.dropped()
        await self.link.call(lambda r: r.eval(RELEASE, 1, self.name, self.token, self.channel), 0)


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
        self._tokens = itertools.count()  # each lease's token is its own: a stale one never drops a new one
        self.leases: dict[str, Lease] = {}  # the keys this process holds the fleet's lease on
        self._claims: _Turn[str, bytes | Claim | None] = _Turn(self._claim)
        self.waiting = 0  # calls waiting for another process's answer now
        self.wakeups = Wakeups(self.link, self.prefix, RECONNECT_EVERY_S)

    @property
    def shared(self) -> bool:  # type: ignore[override]
        return self.link.up

    def index(self, local: ResponseIndex) -> IndexLike:
        return RedisIndex(local, self.link, self.prefix, self.leases)

    def samples(self, cache_dir: Path) -> SampleLedger:
        return RedisSampleLedger(cache_dir, self.link, self.prefix)

    def limiter(self, model: ModelConfig) -> SharedLimiter | None:
        limiter = RedisLimiter(self.link, self.prefix, model)
        return limiter if limiter.buckets else None

    async def claim(self, key: str) -> bytes | Claim | None:
        """The fleet's answer for ``key``, else a lease on it (one script); None when another holds it.

        Redis out of reach: the claim is ours (single-flight is per process meanwhile).
        """
        return await self._claims.submit(key)

    async def _claim(self, keys: list[str]) -> list[bytes | Claim | None]:
        """Every claim of one loop turn in one trip (:data:`CLAIM`)."""
        ttl_ms = int(self.config.lease_s * 1000)
        entries = index_prefix(self.prefix)
        names = [f"{self.prefix}lease:{key}" for key in keys]
        tokens = [f"{self.owner}-{next(self._tokens)}" for _ in keys]
        script_keys = [
            name for key, lease in zip(keys, names, strict=True) for name in (entries + key, lease)
        ]
        found = await self.link.call(
            lambda r: self.link.script(CLAIM)(script_keys, [*tokens, ttl_ms], r), [1] * len(keys)
        )
        claims: list[bytes | Claim | None] = []
        for key, name, token, outcome in zip(keys, names, tokens, found, strict=True):
            if isinstance(outcome, bytes):
                claims.append(outcome)
            elif outcome:
                claims.append(Lease(self.link, key, name, token, ttl_ms, self.leases, self.wakeups.channel))
            else:
                claims.append(None)
        return claims

    async def wait_for(self, key: str) -> bytes | None:
        """The holder's answer, looked up when its end is announced (:mod:`gateway.state.wakeups`).

        Looks once at the start (the end may have come before this process
        was listening for it), then after each announcement, and at least
        every ``wait_recheck_s`` (a lost announcement, a dead holder whose
        lease expired). None once the lease is gone without an answer (the
        holder failed, or died), after an announcement without an answer (the
        key changed hands: claiming again marks it waited-for again), when
        Redis is out of reach, or after ``wait_s``: the caller then tries to
        claim the key itself.
        """
        entry, lease = index_prefix(self.prefix) + key, f"{self.prefix}lease:{key}"
        deadline = time.monotonic() + self.config.wait_s
        announced = False
        self.waiting += 1
        try:
            while True:
                ended = self.wakeups.expect(lease)  # before looking: no announcement falls in between
                try:
                    found = await self.link.call(lambda r: r.mget([entry, lease]), None)
                    if found is None:
                        return None
                    body, holder = found
                    if isinstance(body, bytes):
                        return body
                    left = deadline - time.monotonic()
                    if holder is None or announced or left <= 0:
                        return None
                    pause = self.config.wait_recheck_s if self.wakeups.listening else UNSUBSCRIBED_POLL_S
                    try:
                        await asyncio.wait_for(ended.wait(), min(pause, left))
                        announced = True
                    except asyncio.TimeoutError:
                        pass
                finally:
                    self.wakeups.forget(lease, ended)
        finally:
            self.waiting -= 1

    def health(self) -> dict[str, Any]:
        detail = super().health()
        detail |= {"url": _without_password(self.link.url), "fallbacks": self.link.fallbacks}
        detail["outages"] = self.link.outages
        detail["waiting"] = self.waiting
        detail["announced"] = self.wakeups.heard  # answers (or give-ups) this process heard announced
        detail["subscribed"] = self.wakeups.listening  # else waiters look every UNSUBSCRIBED_POLL_S
        if not self.link.up:
            detail["per_process"] = "everything, until redis is back: " + (self.link.last_error or "")
        return detail

    async def start(self) -> None:
        await self.link.connect()
        self.wakeups.start()

    async def close(self) -> None:
        await self.wakeups.close()
        await self.link.close()


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
