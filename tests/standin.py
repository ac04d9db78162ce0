"""A fault-injecting stand-in upstream: what a real provider won't produce on demand.

Each request takes the next fault from a script (a list), then falls back to a
normal answer. Faults: an error status with a message, a hang past the
client's timeout, a connection dropped mid-body, invalid JSON, a torn event stream,
a 200 with a body of the test's choosing (as one event, when streamed), and a slow
stream that sends its first event and then waits until the test releases it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class Fault:
    """One scripted misbehaviour."""

    kind: str  # "status" | "hang" | "drop" | "invalid_json" | "torn_stream" | "body" | "slow_stream"
    status: int = 500
    message: str = "scripted failure"
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None  # for "body": the JSON answered with 200


def completion_body(prompt: str) -> dict:
    """A well-formed text completion echoing the prompt."""
    return {
        "id": "cmpl-standin",
        "object": "text_completion",
        "created": 0,
        "model": "standin",
        "choices": [{"index": 0, "text": f" answer to {prompt}", "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


class StandIn:
    """An OpenAI-compatible server whose next responses are scripted faults."""

    def __init__(self) -> None:
        self.script: list[Fault] = []
        self.calls: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []
        self.bodies_seen: list[dict] = []
        self.arrivals: list[float] = []  # monotonic time of each request, for rate checks
        self.arrived = asyncio.Event()  # set on every arrival; tests clear it to wait for the next
        self.released = asyncio.Event()  # hangs last until a test releases them (or the end)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "standin", "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.calls[request.path] += 1
        self.arrivals.append(time.monotonic())
        self.arrived.set()
        body = await request.json()
        self.headers_seen.append(dict(request.headers))
        self.bodies_seen.append(body)
        prompt = str(body.get("prompt") or body.get("messages"))
        fault = self.script.pop(0) if self.script else None
        if fault is None:
            if body.get("stream"):
                return await self._stream(request, prompt, torn=False)
            return web.Response(body=orjson.dumps(completion_body(prompt)), content_type="application/json")
        if fault.kind == "status":
            error = {"error": {"message": fault.message, "type": "scripted", "code": None}}
            return web.Response(
                status=fault.status,
                body=orjson.dumps(error),
                content_type="application/json",
                headers=fault.headers,
            )
        if fault.kind == "hang":
            await self.released.wait()
            return web.Response(body=orjson.dumps(completion_body(prompt)), content_type="application/json")
        if fault.kind == "invalid_json":
            return web.Response(body=b'{"choices": [', content_type="application/json")
        if fault.kind == "torn_stream":
            return await self._stream(request, prompt, torn=True)
        if fault.kind == "slow_stream":
            return await self._stream(request, prompt, torn=False, slow=True)
        if fault.kind == "body":
            if body.get("stream"):
                return await self._stream(request, prompt, torn=False, chunk=fault.body)
            return web.Response(body=orjson.dumps(fault.body), content_type="application/json")
        assert fault.kind == "drop"
        response = web.StreamResponse(headers={"Content-Length": "1000", "Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id": "cmpl-torn", "choi')
        assert request.transport is not None
        request.transport.close()
        return response

    async def _stream(
        self, request: web.Request, prompt: str, torn: bool, slow: bool = False, chunk: dict | None = None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if chunk is None:
            chunk = completion_body(prompt)
            chunk["choices"][0]["finish_reason"] = None
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if slow:
            await self.released.wait()
            await response.write(b"data: " + orjson.dumps(completion_body("the rest")) + b"\n\n")
        if torn:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
