"""The interface every provider implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Provider(Protocol):
    """Sends one request upstream. Raises ``gateway.errors.UpstreamError`` on failure."""

    name: str

    async def call(self, endpoint: str, body: dict[str, Any] | None) -> bytes:
        """The upstream's 200 body for ``endpoint`` (GET when ``body`` is None)."""
        ...

    def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The ``data:`` payloads of a server-sent-event answer, ending before ``[DONE]``."""
        ...
