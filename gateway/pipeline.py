"""The request pipeline behind every model endpoint: cache lookup → single-flight → provider → record.

Order of guarantees for every answered request: its record is written (as
durable as the fsync policy says) and then, for a fresh success, its index
entry is stored, before the client sees a byte of it. (Should the index write
fail, say on a full disk, the failure is logged and the answer stands: the
record is the source of truth and ``gateway cache rebuild`` restores the entry.)
Failures are recorded and never cached. Upstream work runs detached from the
client that started it, so a client that hangs up never costs the others
sharing that call their answer, nor the run its record. On shutdown the
gateway waits for every upstream call it started (:meth:`Pipeline.drain`) up
to a deadline; a call still running then is cut, recorded as a 503 "gateway
shutting down", and its stream ends with that error event.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import orjson

from cache import embeddings
from cache.index import ResponseIndex
from cache.keys import sample_key
from cache.record import RECORD_SCHEMA, Record, Served
from cache.records import RecordWriteError, RecordWriter
from cache.validity import invalid_reason
from gateway.config import ModelConfig
from gateway.errors import GatewayError, shutting_down
from gateway.metrics import Metrics
from gateway.pricing import Costs
from gateway.samples import SampleLedger
from gateway.singleflight import Feed, SingleFlight, run_detached
from gateway.state import Claim, IndexLike, State
from gateway.streaming import DONE, assembler_for, carries_answer, replay_events, sse_event
from gateway.upstream import Attempts, Event, Upstream, invalid_answer
from gateway.usage_memo import UsageMemo

log = logging.getLogger("gateway.pipeline")

CacheMode = Literal["use", "refresh", "bypass"]

_END = object()
# Endpoints whose streams report usage only when asked (the Responses API always does).
USAGE_ON_REQUEST = frozenset({"/v1/completions", "/v1/chat/completions"})
T = TypeVar("T")


def task_of(body: dict[str, Any] | None) -> str | None:
    """The task a body names for itself (``metadata.task``), as ``X-Task`` would."""
    metadata = body.get("metadata") if body else None
    task = metadata.get("task") if isinstance(metadata, dict) else None
    return task if isinstance(task, str) else None


@dataclass(frozen=True)
class Call:
    """One client request, resolved: which run, endpoint, model and cache key."""

    run_id: str
    endpoint: str
    model: ModelConfig
    body: dict[str, Any] | None
    key: str
    cache_mode: CacheMode = "use"
    stream: bool = False
    task: str | None = None  # for reports: X-Task, else the request's metadata.task
    sample: int | None = None  # which sample of a sampling request this is (gateway.samples)
    sample_of: str | None = None  # the key of the request it samples; ``key`` is that sample's own
    sample_pinned: bool = False  # named by X-Sample-Index rather than taken in turn

    def upstream_body(self) -> dict[str, Any] | None:
        """The body as sent upstream: the configured upstream model, usage always on streams."""
        if self.body is None:
            return None
        body = dict(self.body)
        body.pop("api_key", None)  # the provider's key comes from config, never from a client
        if "model" in body or self.endpoint.startswith("/v1/"):
            body["model"] = self.model.target_model
        if self.stream and self.endpoint in USAGE_ON_REQUEST:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body


@dataclass(frozen=True)
class Answer:
    """A response body and how it was served."""

    body: bytes
    served: Served


class Pipeline:
    """Answers calls from the index, a shared in-flight call, or the upstream."""

    def __init__(
        self,
        index: ResponseIndex | IndexLike,
        records: RecordWriter,
        upstreams: dict[str, Upstream],
        costs: Costs | None = None,
        metrics: Metrics | None = None,
        state: State | None = None,
    ) -> None:
        self.state = state if state is not None else State()
        self.index = index
        self.records = records
        self.upstreams = upstreams
        self.costs = costs if costs is not None else Costs(u.model for u in upstreams.values())
        self.metrics = metrics if metrics is not None else Metrics()
        self.flights: SingleFlight[Answer] = SingleFlight()
        self.usage = UsageMemo()  # so a hit's record never re-parses its body for its usage
        self.feeds: dict[str, Feed[Any]] = {}  # the events of streamed flights, for their followers
        self.samples: SampleLedger = self.state.samples(records.cache_dir)
        self._upstream_work: set[asyncio.Future[Any]] = set()  # every detached upstream call
        self.stopping = False

    async def sample(self, call: Call, pinned: int | None = None) -> Call:
        """``call`` as one sample of itself: the ``pinned`` one, else the run's next in turn."""
        if pinned is None:
            index = await self.samples.take(call.run_id, call.key)
        else:
            index = pinned
            await self.samples.pin(call.run_id, call.key, index)
        return replace(
            call,
            key=sample_key(call.key, index),
            sample=index,
            sample_of=call.key,
            sample_pinned=pinned is not None,
        )

    def _detach(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Run ``work`` apart from the client asking, as upstream work :meth:`drain` waits for."""
        task = run_detached(lambda: work)
        self._upstream_work.add(task)
        task.add_done_callback(self._upstream_work.discard)
        return task

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the upstream calls in flight; cut (and record) the rest."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._upstream_work:
            log.info(
                "stopping: waiting up to %gs for %d upstream call(s)", timeout_s, len(self._upstream_work)
            )
        while self._upstream_work and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._upstream_work), timeout=remaining)
        late = list(self._upstream_work)
        if late:
            log.warning("shutdown deadline passed: cutting %d upstream call(s) still running", len(late))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # -- plain answers ---------------------------------------------------------

    async def answer(self, call: Call) -> Answer:
        """The whole response for a non-streaming call."""
        started = time.time()
        if call.cache_mode == "use":
            # The second look: an identical call may have finished while we read the disk.
            cached = await self.index.aget(call.key) or self.index.recent(call.key)
            if cached is not None:
                await self._record(call, "hit", started, body=cached)
                return Answer(cached, "hit")
        if call.cache_mode == "bypass":
            return await asyncio.shield(self._detach(self._fetch(call, started)))
        flight = self.flights.join(call.key)
        if flight is None:
            flight = self.flights.start(call.key, lambda: self._detach(self._fetch_once(call, started)))
            return await asyncio.shield(flight)
        return await self._follow(call, flight, started)

    async def _fetch_once(self, call: Call, started: float) -> Answer:
        """:meth:`_fetch`, unless another process of the fleet is already fetching this key: then its answer.

        Only for ``use``: a refresh must reach the upstream. With the local
        state every claim is granted at once (single-flight is this process's).
        """
        if call.cache_mode != "use":
            return await self._fetch(call, started)
        while True:
            claim = await self.state.claim(call.key)
            if isinstance(claim, bytes):  # another process answered between our lookup and our claim
                await self._record(call, "hit", started, body=claim)
                return Answer(claim, "hit")
            if claim is not None:
                try:
                    return await self._fetch(call, started)
                finally:
                    await claim.release()
            body = await self.state.wait_for(call.key)
            if body is not None:
                await self._record(call, "coalesced", started, body=body)
                return Answer(body, "coalesced")
            # The holder gave up or died (its lease expired): claim the key again.

    async def _follow(self, call: Call, flight: asyncio.Future[Answer], started: float) -> Answer:
        """Share another request's upstream call, keeping a record of our own."""
        try:
            answer = await asyncio.shield(flight)
        except GatewayError as exc:
            await self._record(call, "coalesced", started, error=exc)
            raise
        await self._record(call, "coalesced", started, body=answer.body)
        return Answer(answer.body, "coalesced")

    async def _fetch(self, call: Call, started: float) -> Answer:
        """Ask the upstream (retrying as configured); record (and cache) what came back."""
        request = call.upstream_body()
        attempts = Attempts()
        try:
            try:
                answered = await self.upstreams[call.model.name].call(call.endpoint, request, attempts)
            except asyncio.CancelledError as exc:
                raise self._cut(exc) from None
        except GatewayError as exc:  # upstream failures and refusals (a full queue) alike
            await self._record(call, "miss", started, error=exc, request=request, attempts=attempts)
            raise
        served: Served = "batched" if answered.batched else "miss"
        await self._store(call, served, started, answered.body, request, attempts, answered.data)
        return Answer(answered.body, served)

    async def _store(
        self,
        call: Call,
        served: Served,
        started: float,
        body: bytes,
        request: Any,
        attempts: Attempts,
        data: Any = None,
    ) -> None:
        # The record first: the index is never ahead of the source of truth.
        await self._record(call, served, started, body=body, request=request, attempts=attempts, data=data)
        if call.cache_mode == "bypass":
            return
        await self._index(call.key, body)

    async def _index(self, key: str, body: bytes) -> None:
        """Store an answer already recorded; a failure (a full disk) is logged: the record still stands."""
        try:
            await self.index.aset(key, body)
        except (OSError, sqlite3.Error) as exc:
            log.warning("index write failed (%s); `gateway cache rebuild` restores it from the records", exc)

    async def settle_batch(
        self,
        call: Call,
        served: Served,
        started: float,
        *,
        body: bytes | None = None,
        data: Any = None,
        error: GatewayError | None = None,
    ) -> None:
        """Record one line the batch lane answered; a fresh ``batch`` answer is also indexed, like a miss."""
        if error is not None or body is None:
            await self._record(call, served, started, error=error)
        elif served == "batch":
            attempts = Attempts(count=1)
            await self._store(call, served, started, body, call.upstream_body(), attempts, data)
        else:
            await self._record(call, served, started, body=body)

    # -- embeddings ------------------------------------------------------------

    async def embed(self, call: Call, inputs: list[Any], keys: list[str]) -> Answer:
        """An embeddings answer from each input's entry; only the inputs not cached go upstream, once each.

        Runs detached from the client, as every upstream call does: one that hangs up
        never costs the run the record of what was paid for.
        """
        return await asyncio.shield(self._detach(self._embed_once(call, inputs, keys)))

    async def _embed_once(self, call: Call, inputs: list[Any], keys: list[str]) -> Answer:
        """:meth:`_embed`, then the release of its leases (no trip when storing its answers dropped them)."""
        claims: list[Claim] = []
        try:
            return await self._embed(call, inputs, keys, claims)
        finally:
            for claim in claims:
                await claim.release()

    async def _embed(self, call: Call, inputs: list[Any], keys: list[str], claims: list[Claim]) -> Answer:
        started = time.time()
        parts: dict[str, bytes] = {}
        if call.cache_mode == "use":
            unique = list(dict.fromkeys(keys))
            # All at once: the index reads every lookup of one loop turn in one trip to its thread.
            for key, cached in zip(unique, await asyncio.gather(*map(self.index.aget, unique)), strict=True):
                if cached is not None:
                    parts[key] = cached
        first = {key: inputs[i] for i, key in reversed(list(enumerate(keys)))}
        missing = [key for key in dict.fromkeys(keys) if key not in parts]
        waited = False
        if call.cache_mode == "use" and self.state.shared and missing:
            missing, waited = await self._share_inputs(missing, parts, claims)
        request, attempts, paid = None, Attempts(), []
        if missing:
            request = {**(call.upstream_body() or {}), "input": [first[key] for key in missing]}
            try:
                try:
                    answered = await self.upstreams[call.model.name].call(call.endpoint, request, attempts)
                except asyncio.CancelledError as exc:
                    raise self._cut(exc) from None
                if len(answered.data["data"]) != len(missing):
                    raise invalid_answer(
                        call.endpoint, f"{len(answered.data['data'])} embeddings for {len(missing)} inputs"
                    )
            except GatewayError as exc:
                await self._record(call, "miss", started, error=exc, request=request, attempts=attempts)
                raise
            items = sorted(answered.data["data"], key=lambda item: item["index"])
            tokens = embeddings.token_shares(answered.data, request["input"])
            for key, item, count in zip(missing, items, tokens, strict=True):
                parts[key] = embeddings.part_body(item, answered.data.get("model"), count)
                paid.append((key, count))
        data = embeddings.assemble([parts[key] for key in keys])
        body = orjson.dumps(data)
        served: Served = "miss" if missing else "coalesced" if waited else "hit"
        position = {key: i for i, key in reversed(list(enumerate(keys)))}
        record_parts = [[position[key], key, count] for key, count in paid]
        spent = sum(count for _, count in paid)  # the record's usage (and cost) is what this request paid
        paid_data = {**data, "usage": {"prompt_tokens": spent, "total_tokens": spent}}
        await self._record(
            call,
            served,
            started,
            body=body,
            request=request,
            attempts=attempts,
            data=paid_data,
            parts=record_parts,
        )
        if call.cache_mode != "bypass":  # all in one turn: one trip (which also drops their leases)
            await asyncio.gather(*(self._index(key, parts[key]) for key, _ in paid))
        return Answer(body, served)

    async def _share_inputs(
        self, missing: list[str], parts: dict[str, bytes], claims: list[Claim]
    ) -> tuple[list[str], bool]:
        """Of ``missing``, the inputs to fetch here, and whether any came from another process's call.

        Waits only while other processes are fetching every input still
        missing; once this request claims one, it fetches all it lacks (never
        waiting while it holds leases: two requests could each wait for the
        other). Answers found go into ``parts``, claims taken into ``claims``.
        """
        waited = False
        while missing:
            others = []
            for key, claim in zip(
                missing, await asyncio.gather(*map(self.state.claim, missing)), strict=True
            ):
                if isinstance(claim, bytes):
                    parts[key] = claim
                elif claim is None:
                    others.append(key)
                else:
                    claims.append(claim)
            if claims:
                return [key for key in missing if key not in parts], waited
            missing = []
            for key, found in zip(
                others, await asyncio.gather(*map(self.state.wait_for, others)), strict=True
            ):
                if found is None:
                    missing.append(key)  # its holder gave up or died: claim it again
                else:
                    parts[key], waited = found, True
        return [], waited

    # -- streamed answers ------------------------------------------------------

    async def answer_stream(self, call: Call) -> tuple[Served, AsyncIterator[bytes]]:
        """How a streaming call is served, and its server-sent events.

        Raises before the first event when nothing can be sent, so the client
        gets a plain error response instead of a broken stream. A streaming
        call identical to one already streaming reads along with it, event by
        event as they arrive.
        """
        include_usage = _include_usage(call.body)
        started = time.time()
        if call.cache_mode == "use":
            cached = await self.index.aget(call.key) or self.index.recent(call.key)
            if cached is not None:
                await self._record(call, "hit", started, body=cached)
                return "hit", _aiter(replay_events(orjson.loads(cached), call.endpoint, include_usage))
        if call.cache_mode != "bypass" and (flight := self.flights.join(call.key)) is not None:
            feed = self.feeds.get(call.key)
            if feed is not None:  # a streamed call for it is under way
                return "coalesced", await _started(
                    self._read_along(call, feed, flight, started, include_usage)
                )
            answer = await self._follow(call, flight, started)  # a plain call for it is under way
            return "coalesced", _aiter(replay_events(orjson.loads(answer.body), call.endpoint, include_usage))
        feed = Feed()
        served: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        if call.cache_mode == "use":
            work = lambda: self._fetch_stream_once(call, feed, served)  # noqa: E731
        else:
            work = lambda: self._fetch_stream(call, feed)  # noqa: E731
        if call.cache_mode == "bypass":
            task = self._detach(work())
        else:
            task = self.flights.start(call.key, lambda: self._detach(work()))
            self.feeds[call.key] = feed
            task.add_done_callback(lambda _: self._forget_feed(call.key, feed))
        events = await _started(_read_own(feed, call.endpoint, include_usage))
        return served.result() if served.done() else "miss", events

    def _forget_feed(self, key: str, feed: Feed[Any]) -> None:
        if self.feeds.get(key) is feed:
            del self.feeds[key]

    async def _read_along(
        self, call: Call, feed: Feed[Any], flight: asyncio.Future[Answer], started: float, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """A follower's events: the leader's as they arrive, then its own record, then the end."""
        sent = False
        async for item in feed.read():
            if item is _END or isinstance(item, GatewayError):
                break
            if include_usage or carries_answer(call.endpoint, item.chunk):
                sent = True
                yield sse_event(item.payload)
        try:
            await self._follow(call, flight, started)  # our own record, before the end is sent
        except GatewayError as exc:
            if not sent:
                raise
            yield sse_event(orjson.dumps(exc.payload()))
            return
        yield DONE

    async def _fetch_stream_once(self, call: Call, feed: Feed[Any], served: asyncio.Future[Served]) -> Answer:
        """:meth:`_fetch_stream`, unless another process of the fleet is fetching this key: then its answer.

        That answer comes whole (once the other process has stored it) and is
        fed on as the stream a hit replays; ``served`` says how, before the
        first event.
        """
        started = time.time()
        while True:
            claim = await self.state.claim(call.key)
            if claim is not None and not isinstance(claim, bytes):
                served.set_result("miss")
                try:
                    return await self._fetch_stream(call, feed)
                finally:
                    await claim.release()
            how: Served = "hit" if claim is not None else "coalesced"
            try:
                body = claim if claim is not None else await self.state.wait_for(call.key)
                if body is not None:
                    await self._record(call, how, started, body=body)  # before the client sees a byte
            except (Exception, asyncio.CancelledError) as exc:  # the readers must hear of it, as in a fetch
                error = self._cut(exc) if isinstance(exc, asyncio.CancelledError) else _as_gateway_error(exc)
                feed.put(error)
                raise error from exc
            if body is not None:
                served.set_result(how)
                for event in replay_events(orjson.loads(body), call.endpoint, include_usage=True):
                    if event != DONE:  # each reader ends (and filters usage) as it asked
                        payload = event[len(b"data: ") : -2]
                        feed.put(Event(payload, orjson.loads(payload)))
                feed.put(_END)
                return Answer(body, how)
            # The holder gave up or died (its lease expired): claim the key again.

    async def _fetch_stream(self, call: Call, feed: Feed[Any]) -> Answer:
        started, started_monotonic = time.time(), time.monotonic()
        request = call.upstream_body()
        assert request is not None
        assembler = assembler_for(call.endpoint)
        attempts = Attempts()
        upstream = self.upstreams[call.model.name]
        try:
            async for event in upstream.stream(call.endpoint, request, attempts):
                assembler.add(event.chunk)
                feed.put(event)
            data = assembler.response()
            reason = assembler.incomplete_reason() or invalid_reason(call.endpoint, data)
            if reason is not None:  # a stream that never finished its answer is not one
                incomplete = invalid_answer(call.endpoint, reason)
                attempts.failed(incomplete, started_monotonic, orjson.dumps(data))
                raise incomplete
        except (Exception, asyncio.CancelledError) as exc:  # whatever it is, the clients must hear of it
            error = self._cut(exc) if isinstance(exc, asyncio.CancelledError) else _as_gateway_error(exc)
            try:
                await self._record(call, "miss", started, error=error, request=request, attempts=attempts)
            finally:  # only now: a client told of the failure may ask again at once
                feed.put(error)
            raise error from exc
        raw = orjson.dumps(data)
        body = upstream.scrub(raw)  # a key can be split across two events, each clean alone
        if body is not raw:
            data = orjson.loads(body)
        try:
            await self._store(call, "miss", started, body, request, attempts, data)
        except Exception as exc:  # not recorded: the stream must not end as if it were (nor hang)
            failure = _as_gateway_error(exc)
            feed.put(failure)
            raise failure from exc
        feed.put(_END)
        return Answer(body, "miss")

    def _cut(self, cancelled: asyncio.CancelledError) -> GatewayError:
        """The error an upstream call cut by :meth:`drain` ends with; any other cancellation goes on."""
        if not self.stopping:
            raise cancelled
        return shutting_down()

    # -- records ---------------------------------------------------------------

    async def _record(
        self,
        call: Call,
        served: Served,
        started: float,
        *,
        body: bytes | None = None,
        error: GatewayError | None = None,
        request: Any = None,
        attempts: Attempts | None = None,
        data: Any = None,
        parts: list[list[Any]] | None = None,
    ) -> None:
        now = time.time()
        response = self.usage.response(call.key, body, data)
        # A literal, not a call: the type checks every field at no cost on the hot path.
        record: Record = {
            "schema": RECORD_SCHEMA,
            "key": call.key,
            "run_id": call.run_id,
            "ts": started,
            "ts_end": now,
            "latency_ms": round((now - started) * 1000, 3),
            "endpoint": call.endpoint,
            "model": call.model.name,
            "upstream_model": call.model.target_model,
            "provider": call.model.provider,
            "served": served,
            "stream": call.stream,
            "cacheable": call.cache_mode != "bypass",
            "status": 200 if error is None else error.status,
            "request": request if request is not None else call.upstream_body(),
            "response": orjson.Fragment(body) if body is not None else None,
            "usage": response.get("usage") if isinstance(response, dict) else None,
            "attempts": attempts.count if attempts else 0,
            "failed_attempts": attempts.errors if attempts else [],
            "error": error.payload()["error"] if error is not None else None,
            "task": call.task,
            "ttft_ms": attempts.ttft_ms(started) if attempts else None,
            "sample": call.sample,
            "sample_of": call.sample_of,
        }
        if parts is not None:  # embeddings: the inputs this request paid for (cache.embeddings)
            record["parts"] = parts
        record.update(self.costs.of(call.model, record, response))
        if (
            error is not None
            and call.sample_of is not None
            and call.sample is not None
            and not call.sample_pinned
        ):
            self.samples.give_back(call.run_id, call.sample_of, call.sample)  # the retry asks for it again
        try:
            await self.records.append(call.run_id, record, body=body)  # a hit may refer to the body
        except RecordWriteError as exc:
            # Never acknowledge what could not be kept.
            raise GatewayError(
                503,
                f"the gateway cannot record this request: {exc.strerror}",
                "service_unavailable",
                "record_write_failed",
            ) from exc
        self.metrics.observe(record)


def _as_gateway_error(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):  # upstream failures, refusals (a full queue)
        return exc
    log.exception("unexpected error while streaming", exc_info=exc)
    return GatewayError(500, "internal gateway error", "server_error", "internal")


async def _aiter(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


async def _read_own(feed: Feed[Any], endpoint: str, include_usage: bool) -> AsyncIterator[bytes]:
    """The leader's events; a failure before the first one is raised, later ones end the stream."""
    sent = False
    async for item in feed.read():
        if item is _END:
            yield DONE
            return
        if isinstance(item, GatewayError):
            if not sent:
                raise item
            yield sse_event(orjson.dumps(item.payload()))
            return
        if include_usage or carries_answer(endpoint, item.chunk):
            sent = True
            yield sse_event(item.payload)


async def _started(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``events`` once its first one is there: what fails before it raises here, not mid-stream."""
    first = await anext(events)
    return _chain(first, events)


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for event in rest:
        yield event


def _include_usage(body: dict[str, Any] | None) -> bool:
    options = (body or {}).get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
