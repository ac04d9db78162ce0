"""Requests aiohttp's HTTP parser rejects get an OpenAI-style JSON error too, not aiohttp's plain text.

An unknown method, a malformed request line or a broken header never reaches
a route or a middleware: aiohttp's protocol answers it itself
(``RequestHandler.handle_error``), as ``text/plain``. The only hook such an
answer passes through is the request object's ``_prepare_hook``, called just
before the response's headers go out, and the request object comes from the
application's request factory; so the gateway's factory makes requests whose
hook turns any plain-text error into ``{"error": {message, type, code}}``,
same status, same closed connection. (The hook runs once the headers are
prepared, so it sets the body's length itself.)
"""

from __future__ import annotations

from functools import partial

import orjson
from aiohttp import hdrs, web

from gateway.errors import GatewayError

PLAIN_TEXT = "text/plain"


class JsonErrorRequest(web.Request):
    """A request whose plain-text error answers leave as OpenAI-style JSON."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if (
            isinstance(response, web.Response)
            and response.status >= 400
            and response.content_type == PLAIN_TEXT
        ):
            text = (response.text or "").strip() or response.reason
            server_side = response.status >= 500
            error = GatewayError(
                response.status,
                text,
                "server_error" if server_side else "invalid_request_error",
                "internal" if server_side else "bad_http_request",
            )
            body = orjson.dumps(error.payload())
            response.body = body
            response.content_type = "application/json"
            response.headers[hdrs.CONTENT_LENGTH] = str(len(body))  # headers are already prepared
        await super()._prepare_hook(response)


def answer_parser_errors_in_json(app: web.Application) -> None:
    """Make ``app`` build :class:`JsonErrorRequest` objects (before it starts serving)."""
    # Application._make_request takes the request class as ``_cls``; it is what aiohttp's
    # server calls for every request, parser rejections included.
    setattr(app, "_make_request", partial(app._make_request, _cls=JsonErrorRequest))  # noqa: B010
