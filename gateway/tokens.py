"""Token estimates for rate limiting, before the upstream tells us the real usage.

Exact counts where the tokenizer is known and cheap (tiktoken for OpenAI
models, token-id prompts), else about four characters a token. Estimates only
steer the buckets; real usage refunds the difference, when the upstream's
``usage`` can be believed at all (:func:`trusted_usage`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

CHARS_PER_TOKEN = 4
log = logging.getLogger("gateway.tokens")


@lru_cache(maxsize=16)
def _tiktoken_encoder(model: str) -> Any:
    """tiktoken's encoder for ``model``, or None (then the estimate), tried once per model.

    tiktoken downloads an encoding the first time; offline, or behind a proxy
    that refuses it, that fails with whatever the HTTP stack raises. An estimate
    must never fail a request, so any failure means no encoder (and is cached).
    """
    try:
        import tiktoken

        return tiktoken.encoding_for_model(model.split("/")[-1])
    except (ImportError, KeyError):
        return None
    except Exception as exc:  # the encoding file could not be fetched or read
        log.warning("no tiktoken encoding for %s (%s); estimating its tokens", model, exc)
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


USAGE_COUNTS = ("prompt_tokens", "completion_tokens")


def trusted_usage(usage: Any) -> dict[str, Any] | None:
    """``usage`` when its token counts are whole numbers of at least zero, else None.

    An upstream's ``usage`` is what its answer claims, not something the
    gateway may crash on: a count sent as ``"12"``, ``null``, a dict, a float
    or a negative number makes the whole object untrusted, and the gateway
    counts the tokens itself (``gateway.pricing.count_usage``) rather than fail
    an answer that was paid for. A missing ``total_tokens`` is fine; one that is
    there must be a count too.
    """
    if not isinstance(usage, dict):
        return None
    fields = [*USAGE_COUNTS, *(("total_tokens",) if "total_tokens" in usage else ())]
    if all(_is_count(usage.get(field)) for field in fields):
        return usage
    return None


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # not bool, which is an int too


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
        """Fold a real completion length into the average (anything but a count is ignored)."""
        if not _is_count(completion_tokens):
            return
        self.average = 0.9 * self.average + 0.1 * completion_tokens
