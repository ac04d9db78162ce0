"""Providers: the one place that knows how to talk to each kind of upstream."""

from __future__ import annotations

import aiohttp

from gateway.config import ModelConfig
from gateway.providers.base import Provider
from gateway.providers.openai_compatible import OpenAICompatibleProvider


def make_provider(model: ModelConfig, session: aiohttp.ClientSession) -> Provider:
    """The provider that serves ``model``."""
    if model.provider == "openai-compatible":
        return OpenAICompatibleProvider(model, session)
    raise ValueError(f"unknown provider {model.provider!r}")
