"""The interface every provider implements, and what a call returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Reply:
    """An upstream's successful answer: its body and the headers worth reading (rate limits)."""

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Provider(Protocol):
    """Sends one request upstream. Raises ``gateway.errors.UpstreamError`` on failure."""

    name: str

    async def call(self, endpoint: str, body: dict[str, Any] | None) -> Reply:
        """The upstream's 200 answer for ``endpoint`` (GET when ``body`` is None)."""
        ...

    def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The ``data:`` payloads of a server-sent-event answer, ending before ``[DONE]``."""
        ...

    async def ready(self) -> None:
        """Wait until the provider can serve (an in-process engine loading); the gateway listens after."""
        ...

    async def close(self) -> None:
        """Release what the provider holds (sessions, engines)."""
        ...
