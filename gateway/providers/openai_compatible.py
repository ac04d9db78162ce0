"""Any OpenAI-compatible server (vLLM, SGLang, TGI, LM Studio) over one pooled aiohttp session.

This is the direct path: no SDK between the gateway and the socket, because a
cache hit must cost microseconds and a miss must add well under a millisecond.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.batches.upstream import UpstreamBatches
from gateway.config import ModelConfig
from gateway.errors import upstream_status, upstream_timeout, upstream_unreachable
from gateway.providers import register
from gateway.providers.base import Capabilities, Reply
from gateway.streaming import RESPONSES


@register("openai-compatible")
class OpenAICompatibleProvider(Capabilities):
    """Calls ``{api_base}/…`` for ``/v1/…`` endpoints and the server root for tokenizer ones."""

    @classmethod
    def create(cls, model: ModelConfig, session: aiohttp.ClientSession) -> OpenAICompatibleProvider:
        """A provider on the app's pooled session."""
        return cls(model, session)

    @classmethod
    def batches(cls, model: ModelConfig, session: aiohttp.ClientSession) -> Any:
        """``{api_base}/files`` + ``{api_base}/batches``: OpenAI's, or any server's that has them."""
        return UpstreamBatches(model, session)

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        self.model = model
        self.session = session
        base = (model.api_base or "").rstrip("/")
        self.api_base = base
        self.server_root = base[: -len("/v1")] if base.endswith("/v1") else base
        self.timeout = aiohttp.ClientTimeout(total=model.timeout_s)

    def url(self, endpoint: str) -> str:
        """The upstream URL for a gateway endpoint."""
        if endpoint.startswith("/v1/"):
            return self.api_base + endpoint[3:]
        return self.server_root + endpoint

    def _headers(self) -> dict[str, str]:
        key = self.model.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def call(self, endpoint: str, body: dict[str, Any] | None) -> Reply:
        """One request, its whole 200 body."""
        method = "GET" if body is None else "POST"
        data = None if body is None else orjson.dumps(body)
        headers = self._headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method, self.url(endpoint), data=data, headers=headers, timeout=self.timeout
            ) as response:
                payload = await response.read()
                if response.status != 200:
                    raise upstream_status(response.status, payload, response.headers)
                return Reply(payload, response.headers)
        except asyncio.TimeoutError as exc:
            raise upstream_timeout(self.model.timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise upstream_unreachable(str(exc) or type(exc).__name__) from exc

    async def ready(self) -> None:
        """Nothing to wait for: the upstream is another process."""

    async def close(self) -> None:
        """The session is shared and closed by the app."""

    async def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """Server-sent events from the upstream, one ``data`` payload at a time."""
        headers = {**self._headers(), "Content-Type": "application/json"}
        try:
            async with self.session.post(
                self.url(endpoint), data=orjson.dumps(body), headers=headers, timeout=self.timeout
            ) as response:
                if response.status != 200:
                    raise upstream_status(response.status, await response.read(), response.headers)
                data: list[bytes] = []
                async for raw in response.content:
                    line = raw.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:  # a blank line ends an event
                        payload = b"\n".join(data)
                        data = []
                        if payload == b"[DONE]":
                            return
                        yield payload
                if data and b"\n".join(data) == b"[DONE]":
                    return
                if endpoint == RESPONSES:  # its events end without [DONE]; response.completed ends the answer
                    if data:
                        yield b"\n".join(data)
                    return
                # A torn stream is a failed answer, never a short one.
                raise upstream_unreachable("the event stream ended before [DONE]")
        except asyncio.TimeoutError as exc:
            raise upstream_timeout(self.model.timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise upstream_unreachable(str(exc) or type(exc).__name__) from exc
