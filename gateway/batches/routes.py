"""The HTTP side of the batch lane: OpenAI's ``/v1/files`` and ``/v1/batches``, under every run root."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.auth import check
from gateway.batches.lane import BatchLane
from gateway.batches.lines import refuse_unbatched
from gateway.endpoints import Endpoint, validate_body
from gateway.errors import GatewayError, bad_request
from gateway.handlers import JSON, Handlers, read_json, run_of, sample_index
from gateway.pipeline import task_of


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type=JSON)


def _not_found(what: str, name: str) -> GatewayError:
    return GatewayError(404, f"no {what} {name!r}", "invalid_request_error", "not_found")


def _page(items: list[dict[str, Any]], request: web.Request) -> dict[str, Any]:
    """OpenAI's list shape, newest first, paged by ``after`` and ``limit``."""
    after = request.query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = min(max(int(request.query.get("limit", "20")), 1), 100)
    except ValueError as exc:
        raise bad_request("limit must be an integer", "invalid_limit") from exc
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


class BatchRoutes:
    """The handlers of the batch rows of the endpoint table."""

    lane: BatchLane  # set when the app starts, with the pipeline

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    def _allowed_run(self, request: web.Request) -> str:
        run_id = run_of(request)
        check(self.handlers.grant(request), None, run_id)
        return run_id

    async def upload_file(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``POST /v1/files``: a multipart upload with ``purpose`` and ``file``."""
        run_id = self._allowed_run(request)
        if not request.content_type.startswith("multipart/"):
            raise bad_request(
                "upload the file as multipart/form-data with 'purpose' and 'file'", "invalid_upload"
            )
        try:
            form = await request.post()
        except ValueError as exc:
            raise bad_request(f"the upload cannot be read: {exc}", "invalid_upload") from exc
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            raise bad_request("the upload has no 'file' part", "invalid_upload")
        if purpose != "batch":
            raise bad_request(f"purpose must be 'batch', not {purpose!r}", "invalid_purpose")
        meta = self.lane.files.create(upload.file.read(), upload.filename or "batch.jsonl", "batch", run_id)
        return _json(_public(meta))

    async def list_files(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``GET /v1/files``: the run's files."""
        run_id = self._allowed_run(request)
        return _json(_page([_public(m) for m in self.lane.files.list(run_id)], request))

    def _file(self, request: web.Request) -> dict[str, Any]:
        run_id = self._allowed_run(request)
        file_id = request.match_info["file_id"]
        meta = self.lane.files.get(file_id)
        if meta is None or meta.get("run_id") != run_id:
            raise _not_found("file", file_id)
        return meta

    async def get_file(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``GET /v1/files/{file_id}``: a file object."""
        return _json(_public(self._file(request)))

    async def file_content(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``GET /v1/files/{file_id}/content``: a file's JSONL."""
        meta = self._file(request)
        return web.Response(
            body=self.lane.files.content(meta["id"]), content_type="text/plain", charset="utf-8"
        )

    async def create_batch(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``POST /v1/batches``: answer the cached lines now, send the misses on."""
        run_id = self._allowed_run(request)
        raw = await read_json(request, self.handlers.config.max_body_bytes)
        refuse_unbatched(raw.get("endpoint") if isinstance(raw, dict) else None, "the batch's endpoint")
        body = validate_body(endpoint.path, raw)
        grant = self.handlers.grant(request)
        job = await self.lane.create(
            run_id,
            body["input_file_id"],
            body["endpoint"],
            lambda model: check(grant, model, run_id),
            body.get("completion_window") or "24h",
            body.get("metadata"),
            sample_index(request.headers.get("X-Sample-Index")),  # one sample index for every line
            request.headers.get("X-Task") or task_of(body),  # one label for every line without its own
        )
        return _json(job.as_batch())

    async def list_batches(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``GET /v1/batches``: the run's batches, newest first."""
        run_id = self._allowed_run(request)
        return _json(_page([job.as_batch() for job in self.lane.jobs(run_id)], request))

    async def _job(self, request: web.Request, cancel: bool = False) -> web.Response:
        run_id = self._allowed_run(request)
        batch_id = request.match_info["batch_id"]
        known = self.lane.journal.load(batch_id)
        if known is None or known.run_id != run_id:
            raise _not_found("batch", batch_id)
        job = await (self.lane.cancel(batch_id) if cancel else self.lane.refresh(batch_id))
        assert job is not None
        return _json(job.as_batch())

    async def get_batch(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``GET /v1/batches/{batch_id}``: the batch, after polling its upstream once."""
        return await self._job(request)

    async def cancel_batch(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``POST /v1/batches/{batch_id}/cancel``."""
        return await self._job(request, cancel=True)


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    """A file object as clients see it (without the run it belongs to)."""
    return {k: v for k, v in meta.items() if k != "run_id"}
