"""Token estimates steer the rate buckets; they must never fail a request."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from gateway import tokens


def test_an_encoding_tiktoken_cannot_fetch_falls_back_to_the_estimate_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tiktoken

    tried: list[str] = []

    def offline(model: str) -> Any:  # what tiktoken raises with no network: its download fails
        tried.append(model)
        raise requests.ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)
    tokens._tiktoken_encoder.cache_clear()
    try:
        body = {"messages": [{"role": "user", "content": "x" * 40}]}
        counts = [tokens.input_tokens(body, "openai/gpt-4o-mini") for _ in range(3)]
    finally:
        tokens._tiktoken_encoder.cache_clear()
    assert counts[0] == counts[1] == counts[2] >= 40 // tokens.CHARS_PER_TOKEN
    assert tried == ["gpt-4o-mini"]  # one failed fetch per model, not one per request
