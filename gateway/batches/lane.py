"""The batch lane: a client's batch answered from the cache where it can be, each miss sent upstream once.

Creating a batch reads the client's JSONL, checks every line as its
endpoint's body, keys it like the online request it stands for, and answers
(recording a hit) every line the cache already holds. The distinct misses
are split by model into chunks within the provider's limits and sent to the
provider's batch API, or to the local engine for upstreams without one.
Refreshing a job (on every poll, and whenever a client asks for it) submits
what is not yet submitted, reads what the provider finished, records and
indexes each answer through the pipeline exactly as an online miss
(``served: batch``, at the batch price), and once every chunk is done writes
the output and error files in the client's ``custom_id`` order. Failed and
expired lines are recorded as failures and never cached, so a batch of them
sends them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from cache.keys import is_sampled, request_key
from cache.validity import invalid_reason
from gateway.batches.files import FileStore, new_id
from gateway.batches.journal import TERMINAL, BatchJob, Chunk, Journal, Request
from gateway.batches.lines import (
    answer_of,
    error_line,
    failure_of,
    output_line,
    parse_input,
    read_results,
)
from gateway.batches.local import answer_locally
from gateway.batches.upstream import BatchClient, BatchUpstreamError
from gateway.config import GatewayConfig, ModelConfig
from gateway.errors import GatewayError, bad_request
from gateway.pipeline import Answer, Call, Pipeline, task_of
from gateway.pricing import is_local

log = logging.getLogger("gateway.batches")


def engine_of(model: ModelConfig, client: BatchClient | None) -> str:
    """``upstream`` (the provider's batch API, ``client``) or ``local`` (the pipeline, a few at a time)."""
    if client is None:  # the provider has no batch API (an in-process engine, Anthropic through litellm)
        if model.batch.engine == "upstream":
            log.warning("model %s: its provider has no batch API; the local engine answers", model.name)
        return "local"
    return model.batch.engine or ("local" if is_local(model) else "upstream")


class BatchLane:
    """Creates, advances, cancels and lists the batch jobs of one gateway."""

    def __init__(self, config: GatewayConfig, pipeline: Pipeline, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.pipeline = pipeline
        self.session = session
        self.files = FileStore(config.cache_dir)
        self.journal = Journal(config.cache_dir)
        self._locks: dict[str, asyncio.Lock] = {}
        self._local: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._active: set[str] = set()
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._clients: dict[str, BatchClient | None] = {}

    # -- life ------------------------------------------------------------------

    async def start(self) -> None:
        """Pick up every unfinished job of the journal and poll them."""
        self._active = {job.id for job in self.journal.all() if not job.finished}
        if self._active:
            log.info("resuming %d unfinished batch(es)", len(self._active))
        self._poller = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        """Stop polling and the local engine; the journal holds everything a restart needs."""
        tasks = [t for t in [self._poller, *self._local.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll_forever(self) -> None:
        interval = min(m.batch.poll_interval_s for m in self.config.models)
        while True:
            for batch_id in sorted(self._active):
                try:
                    await self.refresh(batch_id)
                except Exception:  # one job's trouble must not stop the others' polling
                    log.exception("batch %s: refresh failed; trying again at the next poll", batch_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    def _lock(self, batch_id: str) -> asyncio.Lock:
        return self._locks.setdefault(batch_id, asyncio.Lock())

    def _client(self, model: ModelConfig) -> BatchClient | None:
        """The model's provider batch API, as its provider class offers it (None: it has none)."""
        if model.name not in self._clients:
            self._clients[model.name] = model.capabilities.batches(model, self.session)
        return self._clients[model.name]

    # -- create ----------------------------------------------------------------

    async def create(
        self,
        run_id: str,
        input_file_id: str,
        endpoint: str,
        allow: Callable[[str], None],
        completion_window: str = "24h",
        metadata: dict[str, Any] | None = None,
        pinned_sample: int | None = None,
        task: str | None = None,
    ) -> BatchJob:
        """A new job over the uploaded ``input_file_id``: its hits answered now, its misses on their way.

        ``allow`` raises (a 403) for a model the caller may not use; ``pinned_sample``
        names the sample every sampling line is (as ``X-Sample-Index`` does online);
        ``task`` labels every line that does not name its own (as ``X-Task`` does online).
        """
        meta = self.files.get(input_file_id)
        if meta is None or meta.get("run_id") != run_id:
            raise GatewayError(
                404, f"no file {input_file_id!r} in run {run_id!r}", "invalid_request_error", "not_found"
            )
        if meta.get("purpose") != "batch":
            raise bad_request(
                f"file {input_file_id!r} is not a batch input (purpose {meta.get('purpose')!r})",
                "invalid_file",
            )
        now = int(time.time())
        job = BatchJob(
            id=new_id("batch_"),
            run_id=run_id,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            metadata=metadata,
            created_at=now,
            times={"in_progress_at": now},
        )
        hits: list[tuple[Call, bytes]] = []
        cached_bodies: dict[str, bytes] = {}
        for custom_id, body in parse_input(self.files.content(input_file_id), endpoint):
            model = self.config.model(body["model"])
            if model is None:
                raise GatewayError(
                    404,
                    f"batch line {custom_id!r}: model {body['model']!r} is not configured",
                    "invalid_request_error",
                    "model_not_found",
                )
            allow(model.name)
            call = await self._new_call(run_id, endpoint, model, body, pinned_sample, task)
            if call.key not in job.requests:
                cached = await self.pipeline.index.aget(call.key) or self.pipeline.index.recent(call.key)
                if cached is not None:
                    cached_bodies[call.key] = cached
                job.requests[call.key] = Request(
                    key=call.key,
                    model=model.name,
                    body=body,
                    task=call.task,
                    sample=call.sample,
                    sample_of=call.sample_of,
                    state="cached" if cached is not None else "pending",
                )
            if call.key in cached_bodies:
                hits.append((call, cached_bodies[call.key]))
            job.lines.append((custom_id, call.key))
        job.chunks = self._chunks(job)
        self.journal.save(job)
        started = time.time()
        for call, cached in hits:
            await self.pipeline.settle_batch(call, "hit", started, body=cached)
        self._active.add(job.id)
        try:
            await self.refresh(job.id)  # submitted now, not at the next poll
        except Exception:  # the job is kept: the poller tries again
            log.exception("batch %s: first refresh failed; trying again at the next poll", job.id)
        self._wake.set()
        return self.journal.load(job.id) or job

    async def _new_call(
        self,
        run_id: str,
        endpoint: str,
        model: ModelConfig,
        body: dict[str, Any],
        pinned: int | None,
        batch_task: str | None,
    ) -> Call:
        """The online call a line stands for: the same key, the next sample of a sampling request."""
        try:
            key = request_key(endpoint, model.key_namespace, body, None)
        except TypeError as exc:
            raise bad_request(f"a batch line cannot be encoded: {exc}", "invalid_number") from exc
        call = Call(run_id, endpoint, model, body, key, task=task_of(body) or batch_task)
        return await self.pipeline.sample(call, pinned) if is_sampled(endpoint, body) else call

    def _call(self, job: BatchJob, request: Request) -> Call:
        model = self.config.model(request.model)
        assert model is not None, f"model {request.model} left the config"
        return Call(
            job.run_id,
            job.endpoint,
            model,
            request.body,
            request.key,
            task=request.task,
            sample=request.sample,
            sample_of=request.sample_of,
        )

    def _upstream_line(self, job: BatchJob, request: Request, client: BatchClient) -> bytes:
        # The key is the custom_id upstream: identical lines were merged, so it is unique.
        body = self._call(job, request).upstream_body()
        assert body is not None
        body["model"] = client.line_model
        return (
            orjson.dumps({"custom_id": request.key, "method": "POST", "url": job.endpoint, "body": body})
            + b"\n"
        )

    def _chunks(self, job: BatchJob) -> list[Chunk]:
        """The distinct misses by model, split so no upstream file passes its model's line or byte limit."""
        by_model: dict[str, list[str]] = {}
        for key, request in job.requests.items():
            if request.state == "pending":
                by_model.setdefault(request.model, []).append(key)
        chunks: list[Chunk] = []
        for name, keys in by_model.items():
            model = self.config.model(name)
            assert model is not None
            client = self._client(model)
            if client is None or engine_of(model, client) == "local":
                chunks.append(Chunk(model=name, engine="local", keys=keys))
                continue
            current: list[str] = []
            size = 0
            for key in keys:
                line = len(self._upstream_line(job, job.requests[key], client))
                if current and (len(current) >= model.batch.max_lines or size + line > model.batch.max_bytes):
                    chunks.append(Chunk(model=name, engine="upstream", keys=current))
                    current, size = [], 0
                current.append(key)
                size += line
            chunks.append(Chunk(model=name, engine="upstream", keys=current))
        return chunks

    # -- advance ---------------------------------------------------------------

    async def refresh(self, batch_id: str) -> BatchJob | None:
        """The job after one step forward: submit, poll, record what finished, finish it when all is done."""
        async with self._lock(batch_id):
            job = self.journal.load(batch_id)
            if job is None or job.finished:
                self._active.discard(batch_id)
                return job
            for number, chunk in enumerate(job.chunks):
                if chunk.done:
                    continue
                if chunk.engine == "local":
                    await self._advance_local(job, number, chunk)
                elif chunk.upstream_batch_id is None:
                    await self._submit(job, number, chunk)
                else:
                    await self._poll(job, chunk)
            if all(chunk.done for chunk in job.chunks):
                await self._finish(job)
            return job

    async def _submit(self, job: BatchJob, number: int, chunk: Chunk) -> None:
        if job.status == "cancelling":  # never sent: nothing to wait for
            await self._settle_unanswered(job, chunk, {}, "cancelled")
            return
        model = self.config.model(chunk.model)
        client = self._client(model) if model is not None else None
        assert client is not None, f"model {chunk.model} left the config or lost its batch API"
        tag = {"replaygate_batch": job.id, "replaygate_chunk": str(number)}
        try:
            # A submit the journal never heard back from (a crash, a lost reply) is found, not repeated.
            batch = await client.find(tag)
            if batch is None:
                content = b"".join(self._upstream_line(job, job.requests[key], client) for key in chunk.keys)
                file_id = await client.upload(content, f"{job.id}-{number}.jsonl")
                batch = await client.create(file_id, job.endpoint, tag)
        except BatchUpstreamError as exc:
            log.warning(
                "batch %s chunk %d: submit failed (%s); trying again at the next poll", job.id, number, exc
            )
            return
        chunk.upstream_batch_id = str(batch["id"])
        self.journal.save(job)
        log.info(
            "batch %s chunk %d: %d request(s) submitted as %s",
            job.id,
            number,
            len(chunk.keys),
            chunk.upstream_batch_id,
        )

    async def _poll(self, job: BatchJob, chunk: Chunk) -> None:
        model = self.config.model(chunk.model)
        client = self._client(model) if model is not None else None
        assert client is not None and chunk.upstream_batch_id is not None
        try:
            if job.status == "cancelling":  # asked again at each poll until it ends: cancel is idempotent
                await client.cancel(chunk.upstream_batch_id)
            batch = await client.retrieve(chunk.upstream_batch_id)
            status = str(batch.get("status"))
            if status not in TERMINAL:
                return
            results = read_results(
                await client.content(batch.get("output_file_id")),
                await client.content(batch.get("error_file_id")),
            )
        except BatchUpstreamError as exc:
            log.warning("batch %s: polling %s failed (%s)", job.id, chunk.upstream_batch_id, exc)
            return
        await self._settle_unanswered(job, chunk, results, status)

    async def _settle_unanswered(
        self, job: BatchJob, chunk: Chunk, results: dict[str, dict[str, Any]], status: str
    ) -> None:
        """Record each pending request of ``chunk`` from the provider's ``results``; the chunk is done."""
        upstream = self.pipeline.upstreams.get(chunk.model)
        for key in chunk.keys:
            request = job.requests[key]
            if request.state != "pending":
                continue
            call = self._call(job, request)
            data = answer_of(results.get(key))
            if data is not None and (reason := invalid_reason(job.endpoint, data)) is None:
                if await self.pipeline.index.aget(key) is None:  # else recorded before a restart
                    raw = orjson.dumps(data)
                    body = upstream.scrub(raw) if upstream is not None else raw
                    parsed = orjson.loads(body) if body is not raw else data
                    await self.pipeline.settle_batch(
                        call, "batch", float(job.created_at), body=body, data=parsed
                    )
                    await self._settle_duplicates(job, call, body=body)
                request.state = "ok"
                continue
            if data is not None:
                error = GatewayError(
                    502, f"the provider's answer is not one: {reason}", "upstream_error", "invalid_answer"
                )
            else:
                error = failure_of(results.get(key), status)
            await self.pipeline.settle_batch(call, "batch", float(job.created_at), error=error)
            await self._settle_duplicates(job, call, error=error)
            request.state, request.error = "failed", {"code": error.code, "message": error.message}
        chunk.done = True
        self.journal.save(job)

    async def _settle_duplicates(
        self, job: BatchJob, call: Call, *, body: bytes | None = None, error: GatewayError | None = None
    ) -> None:
        """A record for each further line with ``call``'s key: it shared that answer (``coalesced``)."""
        repeats = sum(key == call.key for _, key in job.lines) - 1
        started = time.time()
        for _ in range(repeats):
            await self.pipeline.settle_batch(call, "coalesced", started, body=body, error=error)

    async def _advance_local(self, job: BatchJob, number: int, chunk: Chunk) -> None:
        task = self._local.get((job.id, number))
        if job.status == "cancelling":
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            # What the pipeline answered before the cut is cached: those lines are answered.
            for key in chunk.keys:
                if job.requests[key].state == "pending" and await self.pipeline.index.aget(key) is not None:
                    job.requests[key].state = "ok"
            await self._settle_unanswered(job, chunk, {}, "cancelled")
            return
        if task is None:
            self._local[(job.id, number)] = asyncio.create_task(self._run_local(job.id, number))

    async def _run_local(self, batch_id: str, number: int) -> None:
        job = self.journal.load(batch_id)
        assert job is not None
        chunk = job.chunks[number]
        model = self.config.model(chunk.model)
        assert model is not None
        calls = [
            self._call(job, job.requests[key]) for key in chunk.keys if job.requests[key].state == "pending"
        ]
        answers = await answer_locally(self.pipeline, calls, model.batch.local_concurrency)
        async with self._lock(batch_id):
            job = self.journal.load(batch_id)
            assert job is not None
            for call in calls:
                request, answer = job.requests[call.key], answers[call.key]
                if isinstance(answer, Answer):  # the first line's record is the pipeline's own
                    await self._settle_duplicates(job, call, body=answer.body)
                    request.state = "ok"
                else:
                    await self._settle_duplicates(job, call, error=answer)
                    request.state, request.error = "failed", {"code": answer.code, "message": answer.message}
            job.chunks[number].done = True
            self.journal.save(job)
        self._local.pop((batch_id, number), None)
        self._wake.set()

    async def _finish(self, job: BatchJob) -> None:
        """Write the output and error files, every line in the client's order, and close the job."""
        output, errors = [], []
        for number, (custom_id, key) in enumerate(job.lines):
            line_id = f"batch_req_{job.id[6:]}_{number}"
            request = job.requests[key]
            body = None
            if request.state in ("cached", "ok"):
                body = await self.pipeline.index.aget(key) or self.pipeline.index.recent(key)
            if body is not None:
                output.append(output_line(line_id, custom_id, key, body))
            else:
                error = request.error or {
                    "code": "result_missing",
                    "message": "the answer is not in the index",
                }
                errors.append(error_line(line_id, custom_id, error))
        if output:
            job.output_file_id = self.files.create(
                b"".join(output), f"{job.id}_output.jsonl", "batch_output", job.run_id
            )["id"]
        if errors:
            job.error_file_id = self.files.create(
                b"".join(errors), f"{job.id}_error.jsonl", "batch_output", job.run_id
            )["id"]
        now = int(time.time())
        job.status = "cancelled" if job.status == "cancelling" else "completed"
        job.times.update({"finalizing_at": now, f"{job.status}_at": now})
        self.journal.save(job)
        self._active.discard(job.id)
        log.info("batch %s %s: %s", job.id, job.status, job.counts())

    # -- cancel, list ----------------------------------------------------------

    async def cancel(self, batch_id: str) -> BatchJob | None:
        """Stop the job: lines not yet answered end in the error file (``batch_cancelled``)."""
        async with self._lock(batch_id):
            job = self.journal.load(batch_id)
            if job is None or job.finished or job.status == "cancelling":
                return job
            job.status = "cancelling"
            job.times["cancelling_at"] = int(time.time())
            self.journal.save(job)
        return await self.refresh(batch_id)

    def jobs(self, run_id: str) -> list[BatchJob]:
        """The jobs of ``run_id``, newest first."""
        return [job for job in reversed(self.journal.all()) if job.run_id == run_id]
