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
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

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
        # Built once and reused: a miss should not pay for parsing the same URL and headers again.
        self._urls: dict[str, URL] = {}
        self._headers_for: tuple[str | None, CIMultiDictProxy[str], CIMultiDictProxy[str]] | None = None

    def url(self, endpoint: str) -> str:
        """The upstream URL for a gateway endpoint."""
        if endpoint.startswith("/v1/"):
            return self.api_base + endpoint[3:]
        return self.server_root + endpoint

    def _parsed_url(self, endpoint: str) -> URL:
        url = self._urls.get(endpoint)
        if url is None:
            url = self._urls[endpoint] = URL(self.url(endpoint))
        return url

    def _headers(self, with_body: bool) -> CIMultiDictProxy[str]:
        """The request headers, rebuilt only when the key in the environment changes (read per call)."""
        key = self.model.api_key()
        built = self._headers_for
        if built is None or built[0] != key:
            plain = CIMultiDict({"Authorization": f"Bearer {key}"} if key else {})
            posted = CIMultiDict(plain)
            posted["Content-Type"] = "application/json"
            built = self._headers_for = (key, CIMultiDictProxy(plain), CIMultiDictProxy(posted))
        return built[2] if with_body else built[1]

    async def call(self, endpoint: str, body: dict[str, Any] | None) -> Reply:
        """One request, its whole 200 body."""
        method = "GET" if body is None else "POST"
        data = None if body is None else orjson.dumps(body)
        headers = self._headers(data is not None)
        try:
            async with self.session.request(
                method, self._parsed_url(endpoint), data=data, headers=headers, timeout=self.timeout
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
        headers = self._headers(with_body=True)
        try:
            async with self.session.post(
                self._parsed_url(endpoint), data=orjson.dumps(body), headers=headers, timeout=self.timeout
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
