"""A provider's own batch API, as the lane sees it (:class:`BatchClient`), and its OpenAI-compatible client.

A provider class offers one through ``Capabilities.batches``; a provider that
offers none gets the lane's local engine.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp
import orjson

from gateway.config import ModelConfig


class BatchUpstreamError(Exception):
    """The provider's batch API failed or could not be reached; the lane tries again at the next poll."""


class BatchClient(Protocol):
    """One model's provider batch API in OpenAI's shapes; every failure is a :class:`BatchUpstreamError`."""

    # The model name the provider expects in each line's body.
    line_model: str

    async def upload(self, content: bytes, filename: str) -> str:
        """Upload a batch input file; its id."""
        ...

    async def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Start a batch over an uploaded file; the batch object."""
        ...

    async def find(self, metadata: dict[str, str]) -> dict[str, Any] | None:
        """The batch submitted with ``metadata``, if the provider has one (a submit the journal missed)."""
        ...

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch as the provider sees it now."""
        ...

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the provider to stop the batch."""
        ...

    async def content(self, file_id: str | None) -> bytes:
        """A file's bytes (none for no file)."""
        ...


def matches(batch: Any, metadata: dict[str, str]) -> bool:
    """Whether a provider's batch object carries every item of ``metadata``."""
    return isinstance(batch, dict) and all(
        (batch.get("metadata") or {}).get(k) == v for k, v in metadata.items()
    )


class UpstreamBatches:
    """``{api_base}/files`` and ``{api_base}/batches`` of one model's provider, on the app's session."""

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        self.model = model
        self.session = session
        self.line_model = model.target_model
        self.base = (model.api_base or "https://api.openai.com/v1").rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=model.timeout_s)

    def _headers(self) -> dict[str, str]:
        key = self.model.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _send(
        self, method: str, path: str, extra_headers: dict[str, str] | None = None, **kwargs: Any
    ) -> bytes:
        headers = {**self._headers(), **(extra_headers or {})}
        try:
            async with self.session.request(
                method, self.base + path, headers=headers, timeout=self.timeout, **kwargs
            ) as response:
                body = await response.read()
                if response.status != 200:
                    text = body[:300].decode("utf-8", "replace")
                    raise BatchUpstreamError(f"{method} {path}: {response.status} {text}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BatchUpstreamError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            data = orjson.loads(await self._send(method, path, **kwargs))
        except orjson.JSONDecodeError as exc:
            raise BatchUpstreamError(f"{method} {path}: not JSON") from exc
        if not isinstance(data, dict):
            raise BatchUpstreamError(f"{method} {path}: not a JSON object")
        return data

    async def upload(self, content: bytes, filename: str) -> str:
        """Upload a batch input file; its id."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        return str((await self._json("POST", "/files", data=form))["id"])

    async def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Start a batch over an uploaded file."""
        body = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        headers = {"Content-Type": "application/json"}
        return await self._json("POST", "/batches", data=orjson.dumps(body), extra_headers=headers)

    async def find(self, metadata: dict[str, str]) -> dict[str, Any] | None:
        """The batch submitted with ``metadata``, if the provider has one (a submit the journal missed)."""
        after: str | None = None
        while True:
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("GET", "/batches", params=params)
            batches = page.get("data") or []
            for batch in batches:
                if matches(batch, metadata):
                    return batch
            if not page.get("has_more") or not batches:
                return None
            after = batches[-1]["id"]

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch as the provider sees it now."""
        return await self._json("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the provider to stop the batch."""
        return await self._json("POST", f"/batches/{batch_id}/cancel")

    async def content(self, file_id: str | None) -> bytes:
        """A file's bytes (none for no file)."""
        return b"" if not file_id else await self._send("GET", f"/files/{file_id}/content")
