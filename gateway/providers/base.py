"""The interface every provider implements, and what a call returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class Reply:
    """An upstream's successful answer: its body and the headers worth reading (rate limits)."""

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Provider(Protocol):
    """Sends one request upstream. Raises ``gateway.errors.UpstreamError`` on failure."""

    name: ClassVar[str]
    endpoints: ClassVar[frozenset[str] | None]
    local: ClassVar[bool]
    tiktoken: ClassVar[bool]

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


class Capabilities:
    """What a provider can do, as class attributes the gateway reads instead of checking its name.

    Subclass it, override what differs, and register the class with
    ``gateway.providers.register``.
    """

    name: ClassVar[str] = ""  # set by ``register``
    # The gateway endpoints it serves; None: every one. Others get 501 before any call.
    endpoints: ClassVar[frozenset[str] | None] = None
    local: ClassVar[bool] = False  # runs on this machine: free per token unless a price is configured
    tiktoken: ClassVar[bool] = False  # OpenAI-style model names: tiktoken counts their tokens exactly

    @classmethod
    def create(cls, model: Any, session: Any) -> Any:
        """An instance for ``model``; ``session`` is the app's pooled aiohttp session, for HTTP providers."""
        return cls(model)  # type: ignore[call-arg]

    @classmethod
    def batches(cls, model: Any, session: Any) -> Any | None:
        """The client of ``model``'s own batch API (a ``gateway.batches.upstream.BatchClient``).

        None: the provider has none, and the batch lane answers its lines with
        the local engine (ordinary requests through the pipeline).
        """
        return None
