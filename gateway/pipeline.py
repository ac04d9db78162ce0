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
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson

from cache.index import ResponseIndex
from cache.records import RECORD_SCHEMA, RecordWriteError, RecordWriter
from gateway.config import ModelConfig
from gateway.errors import GatewayError, shutting_down
from gateway.metrics import Metrics
from gateway.pricing import Costs
from gateway.singleflight import SingleFlight
from gateway.streaming import DONE, StreamAssembler, replay_events, sse_event
from gateway.upstream import Attempts, Upstream, torn_body

log = logging.getLogger("gateway.pipeline")

CacheMode = Literal["use", "refresh", "bypass"]
Served = Literal["miss", "hit", "coalesced", "batched"]

_END = object()
T = TypeVar("T")


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

    def upstream_body(self) -> dict[str, Any] | None:
        """The body as sent upstream: the configured upstream model, usage always on streams."""
        if self.body is None:
            return None
        body = dict(self.body)
        body.pop("api_key", None)  # the provider's key comes from config, never from a client
        if "model" in body or self.endpoint.startswith("/v1/"):
            body["model"] = self.model.target_model
        if self.stream:
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
        index: ResponseIndex,
        records: RecordWriter,
        upstreams: dict[str, Upstream],
        costs: Costs | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.index = index
        self.records = records
        self.upstreams = upstreams
        self.costs = costs if costs is not None else Costs(u.model for u in upstreams.values())
        self.metrics = metrics if metrics is not None else Metrics()
        self.flights: SingleFlight[Answer] = SingleFlight()
        self._upstream_work: set[asyncio.Future[Any]] = set()  # every detached upstream call
        self.stopping = False

    def _detach(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Run ``work`` apart from the client asking, as upstream work :meth:`drain` waits for."""
        task = asyncio.ensure_future(work)
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
            flight = self.flights.start(call.key, lambda: self._detach(self._fetch(call, started)))
            return await asyncio.shield(flight)
        return await self._follow(call, flight, started)

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
        try:
            await self.index.aset(call.key, body)
        except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: the kept record still stands
            log.warning("index write failed (%s); `gateway cache rebuild` restores it from the records", exc)

    # -- streamed answers ------------------------------------------------------

    async def answer_stream(self, call: Call) -> tuple[Served, AsyncIterator[bytes]]:
        """How a streaming call is served, and its server-sent events.

        Raises before the first event when nothing can be sent, so the client
        gets a plain error response instead of a broken stream.
        """
        include_usage = bool((call.body or {}).get("stream_options", {}).get("include_usage"))
        chat = call.endpoint.endswith("/chat/completions")
        if call.cache_mode == "use" or self.flights.join(call.key) is not None:
            started = time.time()
            cached = (
                (await self.index.aget(call.key) or self.index.recent(call.key))
                if call.cache_mode == "use"
                else None
            )
            if cached is not None:
                await self._record(call, "hit", started, body=cached)
                return "hit", _aiter(replay_events(orjson.loads(cached), chat, include_usage))
            flight = self.flights.join(call.key)
            if flight is not None:
                answer = await self._follow(call, flight, started)
                events = replay_events(orjson.loads(answer.body), chat, include_usage)
                return "coalesced", _aiter(events)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        work = lambda: self._fetch_stream(call, queue, chat, include_usage)  # noqa: E731
        if call.cache_mode == "bypass":
            self._detach(work())
        else:
            self.flights.start(call.key, lambda: self._detach(work()))
        first = await queue.get()
        if isinstance(first, GatewayError):
            raise first
        return "miss", _drain(first, queue)

    async def _fetch_stream(
        self, call: Call, queue: asyncio.Queue[Any], chat: bool, include_usage: bool
    ) -> Answer:
        started = time.time()
        request = call.upstream_body()
        assert request is not None
        assembler = StreamAssembler(chat)
        attempts = Attempts()
        try:
            async for payload in self.upstreams[call.model.name].stream(call.endpoint, request, attempts):
                chunk = orjson.loads(payload)
                assembler.add(chunk)
                if chunk.get("choices") or include_usage:
                    queue.put_nowait(sse_event(payload))
        except (Exception, asyncio.CancelledError) as exc:  # whatever it is, the client must hear of it
            error = self._cut(exc) if isinstance(exc, asyncio.CancelledError) else _as_gateway_error(exc)
            try:
                await self._record(call, "miss", started, error=error, request=request, attempts=attempts)
            finally:  # only now: a client told of the failure may ask again at once
                queue.put_nowait(error)
            raise error from exc
        data = assembler.response()
        body = orjson.dumps(data)
        try:
            await self._store(call, "miss", started, body, request, attempts, data)
        except Exception as exc:  # not recorded: the stream must not end as if it were (nor hang)
            failure = _as_gateway_error(exc)
            queue.put_nowait(failure)
            raise failure from exc
        queue.put_nowait(DONE)
        queue.put_nowait(_END)
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
    ) -> None:
        now = time.time()
        response = data if data is not None or body is None else orjson.loads(body)
        record = {
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
        }
        record.update(self.costs.of(call.model, record, response))
        try:
            await self.records.append(call.run_id, record)
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
    if isinstance(exc, orjson.JSONDecodeError):
        return torn_body(exc)
    log.exception("unexpected error while streaming", exc_info=exc)
    return GatewayError(500, "internal gateway error", "server_error", "internal")


async def _aiter(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


async def _drain(first: bytes, queue: asyncio.Queue[Any]) -> AsyncIterator[bytes]:
    item: Any = first
    while item is not _END:
        if isinstance(item, GatewayError):
            yield sse_event(orjson.dumps(item.payload()))
            return
        yield item
        item = await queue.get()
