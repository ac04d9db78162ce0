"""A fast OpenAI-compatible stand-in upstream (aiohttp + orjson), and the ceiling a gateway is measured by.

It answers ``POST /v1/completions`` and ``/v1/chat/completions`` at once with
a small, realistic body (id, choices, usage) built from the request, and
``GET /v1/models``. It does the least an HTTP JSON server must do — parse the
body, build and serialise the answer — so, called directly, it is also "the
minimal aiohttp + orjson server" that TARGETS.md compares the gateway with.
``GET /stats`` says how many completions it has answered, so a benchmark can
prove that cache hits never reached it.

    python benchmarks/standin_upstream.py --port 8101
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

MODEL = "standin"
# About what a short eval answer costs: ~40 tokens of text.
ANSWER = (
    "The capital of France is Paris. It has been the country's seat of government for most "
    "of its history and is its largest city."
)
JSON = "application/json"


class StandIn:
    """The handlers, and a count of the completions answered."""

    def __init__(self) -> None:
        self.answered = 0
        self._ids = itertools.count()
        self._models = orjson.dumps(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "standin"}]}
        )

    async def chat(self, request: web.Request) -> web.Response:
        """``POST /v1/chat/completions``: one assistant message."""
        body = await _json(request)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER},
            "logprobs": None,
            "finish_reason": "stop",
        }
        return self._answer("chat.completion", body, choice, _prompt_tokens(body.get("messages")))

    async def completions(self, request: web.Request) -> web.Response:
        """``POST /v1/completions``: one text choice."""
        body = await _json(request)
        choice = {"index": 0, "text": " " + ANSWER, "logprobs": None, "finish_reason": "stop"}
        return self._answer("text_completion", body, choice, _prompt_tokens(body.get("prompt")))

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        return web.Response(body=self._models, content_type=JSON)

    async def stats(self, request: web.Request) -> web.Response:
        """``GET /stats``: completions answered so far."""
        return web.Response(body=orjson.dumps({"completions": self.answered}), content_type=JSON)

    def _answer(
        self, kind: str, body: dict[str, Any], choice: dict[str, Any], prompt_tokens: int
    ) -> web.Response:
        self.answered += 1
        completion_tokens = 28
        payload = {
            "id": f"cmpl-standin-{next(self._ids)}",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model") or MODEL,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return web.Response(body=orjson.dumps(payload), content_type=JSON)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def _prompt_tokens(prompt: Any) -> int:
    # A rough count (4 characters a token) is enough for a plausible usage block.
    return max(1, len(orjson.dumps(prompt)) // 4)


def make_app() -> web.Application:
    """The stand-in's aiohttp application."""
    standin = StandIn()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", standin.chat)
    app.router.add_post("/v1/completions", standin.completions)
    app.router.add_get("/v1/models", standin.models)
    app.router.add_get("/stats", standin.stats)
    return app


def main() -> None:
    """Serve the stand-in until interrupted."""
    parser = argparse.ArgumentParser(description="A fast OpenAI-compatible stand-in upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
