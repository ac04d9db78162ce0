"""Checks on request bodies: wrong types get a 400 naming the field, before any work is done.

Only the fields the gateway itself relies on, or that an upstream would turn
into a confusing error, are checked; everything else passes through untouched.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import bad_request

MAX_N = 128


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(t) for t in value)


def _is_prompt(value: Any) -> bool:
    if isinstance(value, str) or _is_token_list(value):
        return True
    return (
        isinstance(value, list)
        and bool(value)
        and (all(isinstance(p, str) for p in value) or all(_is_token_list(p) for p in value))
    )


def _is_stop(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value))


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
    )


# field → (check, what it must be)
_COMMON = {
    "model": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "max_tokens": (lambda v: v is None or (_is_int(v) and v >= 0), "a non-negative integer"),
    "temperature": (lambda v: v is None or _is_number(v), "a number"),
    "top_p": (lambda v: v is None or _is_number(v), "a number"),
    "n": (lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_N), f"an integer from 1 to {MAX_N}"),
    "seed": (lambda v: v is None or _is_int(v), "an integer"),
    "stop": (lambda v: v is None or _is_stop(v), "a string or a list of strings"),
    "stream_options": (lambda v: v is None or isinstance(v, dict), "an object"),
}
_RULES: dict[str, dict[str, tuple[Any, str]]] = {
    "/v1/chat/completions": {
        **_COMMON,
        "messages": (_is_messages, "a non-empty list of objects with a string 'role'"),
        "logprobs": (lambda v: v is None or isinstance(v, bool), "a boolean"),
        "max_completion_tokens": (lambda v: v is None or _is_int(v), "an integer"),
    },
    "/v1/completions": {
        **_COMMON,
        "prompt": (_is_prompt, "a string, a list of strings, or token ids"),
        "echo": (lambda v: v is None or isinstance(v, bool), "a boolean"),
        "logprobs": (lambda v: v is None or (_is_int(v) and v >= 0), "a non-negative integer"),
    },
}
_REQUIRED = {"/v1/chat/completions": ("model", "messages"), "/v1/completions": ("model", "prompt")}


def validate_body(endpoint: str, body: Any) -> dict[str, Any]:
    """Return ``body`` if it is a usable request for ``endpoint``; raise a 400 otherwise."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", "invalid_body")
    for field in _REQUIRED.get(endpoint, ()):
        if field not in body:
            raise bad_request(f"missing required field '{field}'", "missing_field")
    for field, (check, expected) in _RULES.get(endpoint, {}).items():
        if field in body and not check(body[field]):
            raise bad_request(f"'{field}' must be {expected}", "invalid_type")
    return body
