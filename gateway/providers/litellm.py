"""Any model litellm supports (OpenAI, Anthropic, Gemini, Bedrock, …), named the litellm way.

litellm is imported only when such a model is configured (it takes seconds
and hundreds of MB), with its price map read from the package, never fetched.
The key is read from the model's ``api_key_env`` and passed with each call,
never put in litellm's globals. litellm's own retries are off: the gateway's
retry layer is the only one, so every attempt is counted and recorded.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from types import ModuleType
from typing import Any

import orjson

from gateway.config import ModelConfig
from gateway.errors import (
    GatewayError,
    UpstreamError,
    not_supported,
    upstream_failure,
    upstream_timeout,
    upstream_unreachable,
)
from gateway.providers import register
from gateway.providers.base import Capabilities, Reply

# Fields the provider sets itself; a body never overrides them.
_OWN = ("model", "api_key", "api_base", "base_url", "timeout", "max_retries", "num_retries", "stream")


def import_litellm() -> ModuleType:
    """litellm, imported so that it never reaches the network for its price map."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


@register("litellm")
class LiteLLMProvider(Capabilities):
    """``/v1/chat/completions`` → ``litellm.acompletion``, ``/v1/completions`` → ``atext_completion``,
    ``/v1/embeddings`` → ``aembedding``, ``/v1/responses`` → ``aresponses``."""

    # Hosted providers expose no tokenizer endpoints.
    endpoints = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})
    tiktoken = True

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.litellm = import_litellm()

    @classmethod
    def batches(cls, model: ModelConfig, session: Any) -> Any | None:
        """litellm's batch functions, for the providers where litellm can create a batch; else None."""
        from gateway.batches.via_litellm import LiteLLMBatches

        return LiteLLMBatches.for_model(model)

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: v for k, v in body.items() if k not in _OWN}
        kwargs.update(model=self.model.target_model, **connection(self.model))
        return kwargs

    def _function(self, endpoint: str) -> Any:
        if endpoint == "/v1/chat/completions":
            return self.litellm.acompletion
        if endpoint == "/v1/completions":
            return self.litellm.atext_completion
        if endpoint == "/v1/embeddings":
            return self.litellm.aembedding
        if endpoint == "/v1/responses":  # litellm translates it to chat for providers without it
            return self.litellm.aresponses
        raise not_supported(endpoint, self.name)

    async def call(self, endpoint: str, body: dict[str, Any] | None) -> Reply:
        """One completion, as OpenAI JSON, with the rate-limit headers litellm saw."""
        function = self._function(endpoint)
        if body is None:
            raise not_supported(endpoint, self.name)
        try:
            response = await function(**self._kwargs(body))
        except Exception as exc:
            raise self.upstream_error(exc) from exc
        return Reply(_json(response), _headers(response))

    async def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """Each streamed chunk as OpenAI JSON."""
        function = self._function(endpoint)
        try:
            chunks = await function(**self._kwargs(body), stream=True)
            async for chunk in chunks:
                yield _json(chunk)
        except Exception as exc:
            raise self.upstream_error(exc) from exc

    async def ready(self) -> None:
        """Nothing to wait for: the upstream is another process."""

    async def close(self) -> None:
        """Close the HTTP clients litellm cached (shared by all litellm models; closing twice is harmless)."""
        close = getattr(self.litellm, "close_litellm_async_clients", None)  # not in every litellm release
        if close is not None:
            await close()

    def upstream_error(self, exc: Exception) -> GatewayError:
        """The gateway's error for a litellm exception: its status, retryable when it may pass."""
        if isinstance(exc, GatewayError):
            return exc
        failure = _transport_failure(exc)
        if failure == "timeout":
            return upstream_timeout(self.model.timeout_s)
        if failure == "unreachable":
            return upstream_unreachable(_message(exc))
        status = getattr(exc, "status_code", None)
        if not isinstance(status, int):
            # Not an upstream answer at all (a bug, a bad argument litellm refused early).
            return UpstreamError(500, f"litellm failed: {_message(exc)}", "upstream_error", False)
        return upstream_failure(status, _message(exc), _error_headers(exc))


def connection(model: ModelConfig) -> dict[str, Any]:
    """What every litellm call for ``model`` is given: key, base, timeout, and no retries of litellm's own."""
    kwargs: dict[str, Any] = {"timeout": model.timeout_s, "max_retries": 0}
    key = model.api_key()
    if key:
        kwargs["api_key"] = key
    elif model.api_base and not model.api_key_env:
        # A keyless local server: the OpenAI SDK under litellm refuses to send without some key.
        kwargs["api_key"] = "no-key"
    if model.api_base:
        kwargs["api_base"] = model.api_base
    return kwargs


def _transport_failure(exc: BaseException) -> str | None:
    """``timeout`` or ``unreachable`` when no answer came back at all, else None.

    litellm reports some of these as statuses (a refused connection becomes an
    ``InternalServerError`` 500), so the cause chain is the evidence.
    """
    import httpx
    import openai

    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            break
        if isinstance(seen, openai.APITimeoutError | httpx.TimeoutException | asyncio.TimeoutError):
            return "timeout"
        if isinstance(seen, openai.APIConnectionError | httpx.TransportError | ConnectionError):
            return "unreachable"
        seen = seen.__cause__ or seen.__context__
    return None


def _json(response: Any) -> bytes:
    data = response.model_dump() if hasattr(response, "model_dump") else dict(response)
    return orjson.dumps(data, default=str)


def _headers(response: Any) -> dict[str, str]:
    """The provider's rate-limit headers, as litellm passed them on."""
    hidden = getattr(response, "_hidden_params", None) or {}
    raw = hidden.get("additional_headers") or {}
    headers: dict[str, str] = {}
    for name, value in raw.items():
        name = str(name).lower().removeprefix("llm_provider-")
        if name.startswith(("x-ratelimit-", "retry-after", "anthropic-ratelimit-")):
            headers[name] = str(value)
    return headers


def _error_headers(exc: Exception) -> dict[str, str]:
    headers: dict[str, str] = {}
    response = getattr(exc, "response", None)
    sources: list[Mapping[str, Any] | None] = [
        getattr(response, "headers", None),
        getattr(exc, "litellm_response_headers", None),
        getattr(exc, "headers", None),
    ]
    for source in sources:
        if source:
            headers.update({str(k).lower(): str(v) for k, v in source.items()})
    return headers


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc or type(exc).__name__)
