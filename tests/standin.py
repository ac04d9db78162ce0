"""A fault-injecting stand-in upstream: what a real provider won't produce on demand.

Each request takes the next fault from a script (a list), then falls back to a
normal answer. Faults: an error status with a message, a hang past the
client's timeout, a connection dropped mid-body, invalid JSON, a torn event stream,
or a normal answer sent with hostile headers ("ok" with ``headers``), a 200 answer
whose text is chosen by the test ("answer": one that echoes a key, say), or any
body or event stream a test scripts ("body", "events"), or a slow stream that sends its
first event and then waits until the test releases it ("slow_stream").
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Fault:
    """One scripted misbehaviour."""

    # "status" | "ok" (a good answer with ``headers``) | "hang" | "drop" | "invalid_json" | "torn_stream"
    # | "answer" (a good answer whose text is ``message``; streamed, one event per "|"-piece)
    # | "body" (a 200 carrying ``body`` as JSON; streamed, as one event)
    # | "events" (a 200 stream of ``events``, then [DONE])
    # | "slow_stream" (its first event at once, the rest once ``released`` is set)
    kind: str
    status: int = 500
    message: str = "scripted failure"
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    events: list[Any] = field(default_factory=list)


def completion_body(prompt: str, chat: bool = False) -> dict:
    """A well-formed text (or chat) completion echoing the prompt."""
    text = f" answer to {prompt}"
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": "cmpl-standin",
        "object": "chat.completion" if chat else "text_completion",
        "created": 0,
        "model": "standin",
        "choices": [choice],
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
        self.padding = ""  # appended to every normal answer's text: large answers on demand
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
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _embeddings(self, request: web.Request) -> web.Response:
        """A vector per input that depends on the input alone (after a scripted hang, if any)."""
        self.calls[request.path] += 1
        self.arrived.set()
        body = await request.json()
        self.bodies_seen.append(body)
        fault = self.script.pop(0) if self.script else None
        assert fault is None or fault.kind == "hang", f"embeddings take only the hang fault, not {fault}"
        if fault is not None:
            await self.released.wait()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(len(str(x))), float(sum(map(ord, str(x))) % 97)],
            }
            for i, x in enumerate(inputs)
        ]
        usage = {"prompt_tokens": 2 * len(inputs), "total_tokens": 2 * len(inputs)}
        return web.json_response({"object": "list", "data": data, "model": "standin", "usage": usage})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "standin", "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.calls[request.path] += 1
        self.arrivals.append(time.monotonic())
        self.arrived.set()
        body = await request.json()
        self.headers_seen.append(dict(request.headers))
        self.bodies_seen.append(body)
        prompt = str(body.get("prompt") or body.get("messages")) + self.padding
        chat = request.path.endswith("/chat/completions")
        fault = self.script.pop(0) if self.script else None
        if fault is None:
            if body.get("stream"):
                return await self._stream(request, prompt, torn=False, chat=chat)
            return web.Response(
                body=orjson.dumps(completion_body(prompt, chat)), content_type="application/json"
            )
        if fault.kind == "body":
            if body.get("stream"):
                return await self._events(request, [orjson.dumps(fault.body)])
            return web.Response(body=orjson.dumps(fault.body), content_type="application/json")
        if fault.kind == "events":
            return await self._events(request, [orjson.dumps(e) for e in fault.events])
        if fault.kind == "slow_stream":  # the first event at once, the rest once a test releases it
            first, _ = stream_chunks(prompt, chat)
            _, last = stream_chunks("the rest", chat)
            last["choices"][0].update(first["choices"][0], finish_reason="stop")
            if not chat:
                last["choices"][0]["text"] = " answer to the rest"
            return await self._events(request, [orjson.dumps(first), orjson.dumps(last)], hold_after=1)
        if fault.kind == "status":
            error = {"error": {"message": fault.message, "type": "scripted", "code": None}}
            return web.Response(
                status=fault.status,
                body=orjson.dumps(error),
                content_type="application/json",
                headers=fault.headers,
            )
        if fault.kind == "ok":  # a good answer; only its headers misbehave
            body_bytes = orjson.dumps(completion_body(prompt, chat))
            return web.Response(body=body_bytes, content_type="application/json", headers=fault.headers)
        if fault.kind == "hang":
            await self.released.wait()
            return web.Response(body=orjson.dumps(completion_body(prompt)), content_type="application/json")
        if fault.kind == "invalid_json":
            return web.Response(body=b'{"choices": [', content_type="application/json")
        if fault.kind == "torn_stream":
            return await self._stream(request, prompt, torn=True, chat=chat)
        if fault.kind == "answer":  # the text is the message; streamed, one event per "|"-piece
            first, last = stream_chunks(prompt, chat)
            if body.get("stream"):
                pieces = [_with_text(first, piece, chat) for piece in fault.message.split("|")]
                return await self._events(request, [orjson.dumps(e) for e in [*pieces, last]])
            return web.Response(
                body=orjson.dumps(_with_text(completion_body(prompt, chat), fault.message, chat)),
                content_type="application/json",
            )
        assert fault.kind == "drop"
        response = web.StreamResponse(headers={"Content-Length": "1000", "Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id": "cmpl-torn", "choi')
        assert request.transport is not None
        request.transport.close()
        return response

    async def _stream(self, request: web.Request, prompt: str, torn: bool, chat: bool) -> web.StreamResponse:
        """A well-formed stream: the text, then a chunk that finishes the choice, then [DONE]."""
        first, last = stream_chunks(prompt, chat)
        if torn:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: " + orjson.dumps(first) + b"\n\n")
            assert request.transport is not None
            request.transport.close()
            return response
        return await self._events(request, [orjson.dumps(first), orjson.dumps(last)])

    async def _events(
        self, request: web.Request, payloads: list[bytes], hold_after: int | None = None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for number, payload in enumerate(payloads):
            if number == hold_after:
                await self.released.wait()
            await response.write(b"data: " + payload + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def stream_chunks(prompt: str, chat: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two chunks of a well-formed streamed answer: its text, then its finish."""
    head = {"id": "cmpl-standin", "created": 0, "model": "standin"}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    text = f" answer to {prompt}"
    if chat:
        first = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
    else:
        first = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        last = {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
    return {**head, "choices": [first]}, {**head, "choices": [last]}


def _with_text(answer: dict[str, Any], text: str, chat: bool) -> dict[str, Any]:
    """``answer`` (a whole answer or a chunk) with its first choice's text replaced by ``text``."""
    choice = dict(answer["choices"][0])
    if "delta" in choice:
        choice["delta"] = {**choice["delta"], "content": text}
    elif chat:
        choice["message"] = {**choice["message"], "content": text}
    else:
        choice["text"] = text
    return {**answer, "choices": [choice]}
