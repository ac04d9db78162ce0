"""A counting, holdable stand-in upstream run as its own process, for tests that kill or load the gateway.

    python -m tests.standin_process [--port 0]

It prints ``PORT <n>`` on stdout once it listens. ``POST /v1/completions``
(and chat) answers with a body unique to each call (``id`` carries a call
number), so a test can tell which upstream answer a client got. A prompt that
contains ``hold:`` waits until ``POST /release`` (or ``--max-hold-s``):
a slow upstream the test controls instead of guessing durations. With
``stream: true`` the answer comes as events, and a held one sends its first
event at once, the rest on release. ``POST /v1/embeddings`` counts each
request under its inputs joined by ``|``, and holds like a prompt.
``GET /stats`` gives the calls per prompt, their total and those in flight;
``GET /arrivals`` the ``time.monotonic()`` at which each completion call
arrived (one clock for every process of the machine), for tests of rates.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"


class CountingStandIn:
    """The handlers and their counters."""

    def __init__(self, max_hold_s: float) -> None:
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_hold_s = max_hold_s
        self.arrivals: list[float] = []  # time.monotonic() of each completion call, in arrival order
        self.released = asyncio.Event()
        self._ids = itertools.count()

    async def _hold(self, what: str) -> None:
        if "hold:" in what:  # a chat's "prompt" is its messages, as text
            try:
                await asyncio.wait_for(self.released.wait(), self.max_hold_s)
            except asyncio.TimeoutError:
                pass

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """A completion (text or chat) whose id names this call."""
        self.arrivals.append(time.monotonic())  # before reading the body: when the call reached us
        body = orjson.loads(await request.read())
        prompt = str(body.get("prompt") if "prompt" in body else body.get("messages"))
        self.calls[prompt] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if body.get("stream"):
                return await self._stream(request, prompt, body)
            await self._hold(prompt)
            call = next(self._ids)
            text = f" answer {call} to {prompt}"
            if request.path.endswith("/chat/completions"):
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
                kind = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None}
                kind = "text_completion"
            choice["finish_reason"] = "stop"
            payload = {
                "id": f"cmpl-{call}",
                "object": kind,
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [choice],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            }
            return web.Response(body=orjson.dumps(payload), content_type=JSON)
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, prompt: str, body: dict[str, Any]) -> web.StreamResponse:
        """The answer as events: its text (at once), then (held, for a ``hold:`` prompt) finish and usage."""
        call = next(self._ids)
        chat = request.path.endswith("/chat/completions")
        head = {"id": f"cmpl-{call}", "created": int(time.time()), "model": body.get("model")}
        head["object"] = "chat.completion.chunk" if chat else "text_completion"
        text = f" answer {call} to {prompt}"
        if chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}
            last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        else:
            first = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
            last = {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
        usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: " + orjson.dumps({**head, "choices": [first]}) + b"\n\n")
        await self._hold(prompt)
        await response.write(b"data: " + orjson.dumps({**head, "choices": [last]}) + b"\n\n")
        await response.write(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        """A vector per input that depends on the input alone; a held input holds the whole request."""
        body = orjson.loads(await request.read())
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self.calls["|".join(map(str, inputs))] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if any(str(x).startswith("hold:") for x in inputs):
                await self._hold("hold:")
            data = [
                {"object": "embedding", "index": i, "embedding": [float(len(str(x))), float(next(self._ids))]}
                for i, x in enumerate(inputs)
            ]
            usage = {"prompt_tokens": 2 * len(inputs), "total_tokens": 2 * len(inputs)}
            payload = {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
            return web.Response(body=orjson.dumps(payload), content_type=JSON)
        finally:
            self.in_flight -= 1

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        return web.Response(body=b'{"object":"list","data":[{"id":"standin","object":"model"}]}')

    async def stats(self, request: web.Request) -> web.Response:
        """Calls per prompt, their total, and how many are being answered now."""
        stats = {
            "calls": dict(self.calls),
            "total": sum(self.calls.values()),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }
        return web.Response(body=orjson.dumps(stats), content_type=JSON)

    async def arrival_times(self, request: web.Request) -> web.Response:
        """When each completion call arrived (``time.monotonic()``), oldest first."""
        return web.Response(body=orjson.dumps(self.arrivals), content_type=JSON)

    async def release(self, request: web.Request) -> web.Response:
        """Let every held request (and every later one) answer."""
        self.released.set()
        return web.Response(body=b"{}", content_type=JSON)


async def serve(port: int, max_hold_s: float) -> None:
    """Listen on ``port`` (0: any), say which, and serve until killed."""
    standin = CountingStandIn(max_hold_s)
    app = web.Application()
    app.router.add_post("/v1/completions", standin.completions)
    app.router.add_post("/v1/chat/completions", standin.completions)
    app.router.add_post("/v1/embeddings", standin.embeddings)
    app.router.add_get("/v1/models", standin.models)
    app.router.add_get("/stats", standin.stats)
    app.router.add_get("/arrivals", standin.arrival_times)
    app.router.add_post("/release", standin.release)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-hold-s", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.max_hold_s))


if __name__ == "__main__":
    main()
