"""A provider added the way a user adds one: one module, registered by name, capabilities as attributes.

It answers every completion by echoing the prompt, so a test can prove the
gateway serves a provider no other file knows about.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import upstream_failure
from gateway.providers import register
from gateway.providers.base import Capabilities, Reply


@register("echo")
class EchoProvider(Capabilities):
    """Echoes ``prompt`` back as the completion's text."""

    endpoints = frozenset({"/v1/completions"})
    local = True

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls = 0

    async def call(self, endpoint: str, body: dict[str, Any] | None) -> Reply:
        """The prompt, as a text completion; a prompt of "fail" is a 429."""
        self.calls += 1
        prompt = (body or {}).get("prompt")
        if prompt == "fail":
            raise upstream_failure(429, "echo is busy")
        choice = {"index": 0, "text": str(prompt), "logprobs": None, "finish_reason": "stop"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return Reply(
            orjson.dumps({"id": "echo", "object": "text_completion", "choices": [choice], "usage": usage})
        )

    def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """Not offered (the gateway never asks: streaming completions are the only use and it is absent)."""
        raise upstream_failure(400, "echo does not stream")

    async def ready(self) -> None:
        """Nothing to wait for."""

    async def close(self) -> None:
        """Nothing to release."""
