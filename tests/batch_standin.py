"""A stand-in batch provider: OpenAI's ``/v1/files`` + ``/v1/batches`` lifecycle on a clock the test moves.

A batch is ``validating`` until ``validate_s`` have passed on the stand-in's
clock, ``in_progress`` until ``run_s``, then ends as ``outcome`` says:
``completed`` (each line answered unless ``line_fate`` fails it), ``failed``
(no line run), ``expired`` (lines ``line_fate`` calls "unfinished" end in the
error file as ``batch_expired``) or, once cancelled, ``cancelled``. It also
answers ``/v1/chat/completions`` and ``/v1/completions`` online, and counts
every line and request it gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.standin import completion_body


@dataclass
class StandInBatch:
    """One batch the stand-in holds."""

    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, Any]
    created: float
    outcome: str
    cancelled: bool = False
    output_file_id: str | None = None
    error_file_id: str | None = None
    ended: str | None = None


def _prompt(body: dict[str, Any]) -> str:
    if "messages" in body:
        return str(body["messages"][-1].get("content"))
    return str(body.get("prompt"))


@dataclass
class BatchStandIn:
    """The provider; ``advance`` moves its clock."""

    validate_s: float = 10.0
    run_s: float = 100.0
    outcome: str = "completed"  # how the next batches end
    line_fate: Callable[[dict[str, Any]], str] = lambda body: "ok"  # "ok" | "failed" | "unfinished"
    now: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, StandInBatch] = field(default_factory=dict)
    lines_received: int = 0
    online_calls: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def advance(self, seconds: float) -> None:
        """Move the clock on."""
        self.now += seconds

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/v1/chat/completions", self._online)
        app.router.add_post("/v1/completions", self._online)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _online(self, request: web.Request) -> web.Response:
        self.online_calls += 1
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        return web.json_response(completion_body(_prompt(body), chat=chat))

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField) and form["purpose"] == "batch"
        file_id = f"file-up{len(self.files)}"
        self.files[file_id] = upload.file.read()
        # The whole file object OpenAI returns: litellm validates every field of it.
        return web.json_response(
            {
                "id": file_id,
                "object": "file",
                "purpose": "batch",
                "bytes": len(self.files[file_id]),
                "created_at": int(self.now),
                "filename": upload.filename,
                "status": "processed",
            }
        )

    async def _content(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files[request.match_info["file_id"]])

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        batch = StandInBatch(
            f"batch_up{len(self.batches)}",
            body["input_file_id"],
            body["endpoint"],
            body.get("metadata") or {},
            self.now,
            self.outcome,
        )
        self.batches[batch.id] = batch
        self.lines_received += len(self.files[batch.input_file_id].splitlines())
        return web.json_response(self._object(batch))

    async def _list(self, request: web.Request) -> web.Response:
        data = [self._object(b) for b in reversed(self.batches.values())]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _retrieve(self, request: web.Request) -> web.Response:
        return web.json_response(self._object(self.batches[request.match_info["batch_id"]]))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches[request.match_info["batch_id"]]
        batch.cancelled = True
        return web.json_response(self._object(batch))

    def _status(self, batch: StandInBatch) -> str:
        if batch.ended:
            return batch.ended
        if batch.cancelled:
            return self._end(batch, "cancelled")
        age = self.now - batch.created
        if age < self.validate_s:
            return "validating"
        if age < self.run_s:
            return "in_progress"
        return self._end(batch, batch.outcome)

    def _end(self, batch: StandInBatch, status: str) -> str:
        """Write the batch's output and error files as it ends ``status``."""
        batch.ended = status
        output, errors = [], []
        for raw in self.files[batch.input_file_id].splitlines() if status in ("completed", "expired") else []:
            line = orjson.loads(raw)
            fate = self.line_fate(line["body"])
            if fate == "failed":
                error = {"error": {"message": "scripted line failure", "type": "server_error", "code": None}}
                response = {"status_code": 500, "request_id": "r", "body": error}
                errors.append(
                    {"id": "x", "custom_id": line["custom_id"], "response": response, "error": None}
                )
            elif fate == "unfinished" and status == "expired":
                error = {"code": "batch_expired", "message": "This request could not be executed in time."}
                errors.append({"id": "x", "custom_id": line["custom_id"], "response": None, "error": error})
            else:
                answer = completion_body(
                    _prompt(line["body"]), chat=batch.endpoint.endswith("chat/completions")
                )
                response = {"status_code": 200, "request_id": "r", "body": answer}
                output.append(
                    {"id": "x", "custom_id": line["custom_id"], "response": response, "error": None}
                )
        if output:
            batch.output_file_id = f"file-out-{batch.id}"
            self.files[batch.output_file_id] = b"".join(orjson.dumps(o) + b"\n" for o in output)
        if errors:
            batch.error_file_id = f"file-err-{batch.id}"
            self.files[batch.error_file_id] = b"".join(orjson.dumps(e) + b"\n" for e in errors)
        return status

    def _object(self, batch: StandInBatch) -> dict[str, Any]:
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "created_at": int(batch.created),
            "status": self._status(batch),
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "metadata": batch.metadata,
        }
