"""Token estimates for rate limiting, before the upstream tells us the real usage.

Exact counts where the tokenizer is known and cheap (tiktoken for OpenAI
models, token-id prompts), else about four characters a token. Estimates only
steer the buckets; real usage refunds the difference.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

CHARS_PER_TOKEN = 4


@lru_cache(maxsize=16)
def _tiktoken_encoder(model: str) -> Any:
    try:
        import tiktoken

        return tiktoken.encoding_for_model(model.split("/")[-1])
    except (ImportError, KeyError):
        return None


def _text_tokens(text: str, model: str | None) -> int:
    encoder = _tiktoken_encoder(model) if model else None
    if encoder is not None:
        return len(encoder.encode(text, disallowed_special=()))
    return max(1, len(text) // CHARS_PER_TOKEN)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part messages
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def input_tokens(body: dict[str, Any] | None, tiktoken_model: str | None = None) -> int:
    """Prompt tokens of a completions or chat body (exact for token-id prompts)."""
    if not body:
        return 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return _text_tokens(prompt, tiktoken_model)
    if isinstance(prompt, list):
        if all(isinstance(t, int) for t in prompt):
            return len(prompt)
        return sum(len(p) if isinstance(p, list) else _text_tokens(str(p), tiktoken_model) for p in prompt)
    messages = body.get("messages") or []
    text = " ".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
    return _text_tokens(text, tiktoken_model) + 4 * len(messages)


class OutputEstimate:
    """Expected completion tokens: the request's ``max_tokens``, else the running average."""

    def __init__(self, initial: float = 256.0) -> None:
        self.average = initial

    def expect(self, body: dict[str, Any] | None) -> float:
        """Tokens to reserve for the answer to ``body``."""
        if not body:
            return 0.0
        n = body.get("n") or 1
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        return float(limit if isinstance(limit, int) else self.average) * n

    def observe(self, completion_tokens: int) -> None:
        """Fold a real completion length into the average."""
        self.average = 0.9 * self.average + 0.1 * completion_tokens
