"""Providers: the one place that knows how to talk to each kind of upstream."""

from __future__ import annotations

import aiohttp

from gateway.config import ModelConfig
from gateway.providers.base import Provider
from gateway.providers.openai_compatible import OpenAICompatibleProvider


def make_provider(model: ModelConfig, session: aiohttp.ClientSession) -> Provider:
    """The provider that serves ``model``.

    litellm and vLLM are imported only here, when a model needs them: a gateway
    in front of OpenAI-compatible servers alone never pays for either.
    """
    if model.provider == "openai-compatible":
        return OpenAICompatibleProvider(model, session)
    if model.provider == "litellm":
        from gateway.providers.litellm import LiteLLMProvider

        return LiteLLMProvider(model)
    if model.provider == "vllm":
        from gateway.providers.vllm_engine import VLLMEngineProvider

        return VLLMEngineProvider(model)
    raise ValueError(f"unknown provider {model.provider!r}")
