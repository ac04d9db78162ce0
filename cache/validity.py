"""What may be cached: whether an upstream's answer is a complete, valid answer of its endpoint.

A 200 is not proof of an answer: proxies send ``{"error": …}`` with status
200, and a broken upstream can send ``null``, a list or ``"choices": []``.
Such a body is a failed attempt (recorded, retried, never indexed), so a hit
can only ever replay something a model really said. The gateway checks every
fresh answer with :func:`invalid_reason` before storing it, and
``gateway cache rebuild`` checks every record with it again, so one rebuild
cleans a store written before this check existed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[dict[str, Any]], str | None]


def _choices(field: str, kind: type) -> Check:
    """Chat and text completions: a non-empty ``choices`` list, each with an ``index`` and ``field``."""

    def check(data: dict[str, Any]) -> str | None:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return "no choices"
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                return f"choice {position} is not an object"
            if not isinstance(choice.get("index"), int):
                return f"choice {position} has no integer index"
            if not isinstance(choice.get(field), kind):
                return f"choice {position} has no {field}"
        return None

    return check


def _has(field: str, kind: type) -> Check:
    def check(data: dict[str, Any]) -> str | None:
        return None if isinstance(data.get(field), kind) else f"no {field}"

    return check


def _not_empty(data: dict[str, Any]) -> str | None:
    return None if data else "an empty object"


def _embeddings(data: dict[str, Any]) -> str | None:
    items = data.get("data")
    if not isinstance(items, list) or not items:
        return "no data"
    for position, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list | str):
            return f"item {position} has no embedding"
        if not isinstance(item.get("index"), int):
            return f"item {position} has no integer index"
    return None


def _response(data: dict[str, Any]) -> str | None:
    """A Responses API answer: an ``output`` list, and a status that means the model finished."""
    if not isinstance(data.get("output"), list):
        return "no output"
    if data.get("status", "completed") not in ("completed", "incomplete"):
        return f"its status is {data.get('status')!r}"
    return None


# Endpoint → the shape its answer must have (beyond being an object without ``error``).
CHECKS: dict[str, Check] = {
    "/v1/completions": _choices("text", str),
    "/v1/chat/completions": _choices("message", dict),
    "/v1/responses": _response,
    "/v1/embeddings": _embeddings,
    "/tokenize": _has("tokens", list),
    "/detokenize": _has("prompt", str),
    "/tokenizer_info": _not_empty,
}


def invalid_reason(endpoint: str, data: Any) -> str | None:
    """Why ``data`` is not a cacheable answer of ``endpoint``, or None when it is one."""
    if not isinstance(data, dict):
        return f"the answer is {type(data).__name__ if data is not None else 'null'}, not an object"
    if data.get("error") is not None or data.get("object") == "error":
        return "the answer is an error"
    check = CHECKS.get(endpoint)
    return check(data) if check is not None else None
