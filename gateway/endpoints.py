"""Every endpoint the gateway serves, in one table: its routes, validation and ``/openapi.json`` come from it.

A row names the path, the method, the handler that serves it, the JSON Schema
of its body, whether it streams and whether it can be micro-batched. The app
adds a route per row and root (``ROOTS``: a run's, a model's), the validator
checks bodies against the row's schema (compiled once, with jsonschema-rs),
and the OpenAPI description publishes the very same schema, so the three can
never disagree. What a cacheable answer of each endpoint looks like is
``cache.validity``'s, since a rebuild of the index needs it without the gateway.

Adding an endpoint is one row here and, if no handler serves it yet, one
method on ``gateway.handlers.Handlers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema_rs

from gateway.errors import bad_request

MAX_N = 128

_NUMBER = {"type": ["number", "null"]}
_INT = {"type": ["integer", "null"]}
_COUNT = {"type": ["integer", "null"], "minimum": 0}
_BOOL = {"type": ["boolean", "null"]}
_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_TOKENS = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
_STOP = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]}
_MODEL = {"type": "string", "minLength": 1}

# Fields every generating endpoint shares.
_SAMPLING = {
    "model": _MODEL,
    "stream": {"type": "boolean"},
    "stream_options": {"type": ["object", "null"]},
    "max_tokens": _COUNT,
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_N},
    "seed": _INT,
    "stop": _STOP,
}

CHAT_BODY = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        **_SAMPLING,
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}}},
        },
        "logprobs": _BOOL,
        "top_logprobs": _COUNT,
        "max_completion_tokens": _COUNT,
    },
}
COMPLETION_BODY = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        **_SAMPLING,
        "prompt": {
            "oneOf": [
                {"type": "string"},
                _TOKENS,
                _STRINGS,
                {"type": "array", "items": _TOKENS, "minItems": 1},
            ]
        },
        "echo": _BOOL,
        "logprobs": _COUNT,
    },
}
RESPONSES_BODY = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": _MODEL,
        "stream": {"type": "boolean"},
        "input": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}, "minItems": 1}]
        },
        "instructions": {"type": ["string", "null"]},
        "max_output_tokens": _COUNT,
        "temperature": _NUMBER,
        "top_p": _NUMBER,
    },
}
EMBEDDINGS_BODY = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": _MODEL,
        "input": {
            "oneOf": [
                {"type": "string"},
                _STRINGS,
                _TOKENS,
                {"type": "array", "items": _TOKENS, "minItems": 1},
            ]
        },
        "encoding_format": {"enum": ["float", "base64", None]},
        "dimensions": {"type": ["integer", "null"], "minimum": 1},
    },
}
TOKENIZE_BODY = {
    "type": "object",
    "properties": {
        "model": _MODEL,
        "prompt": {"type": "string"},
        "messages": CHAT_BODY["properties"]["messages"],  # type: ignore[index]
        "add_special_tokens": _BOOL,
    },
    "anyOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
}
DETOKENIZE_BODY = {
    "type": "object",
    "required": ["tokens"],
    "properties": {"model": _MODEL, "tokens": {"type": "array", "items": {"type": "integer"}}},
}
# Endpoints the batch lane answers: one answer per request, cached by key as online.
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
BATCH_BODY = {
    "type": "object",
    "required": ["input_file_id", "endpoint"],
    "properties": {
        "input_file_id": {"type": "string", "minLength": 1},
        "endpoint": {"enum": list(BATCH_ENDPOINTS)},
        "completion_window": {"type": ["string", "null"]},
        "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    },
}


@dataclass(frozen=True)
class Endpoint:
    """One row of the table."""

    path: str
    method: str
    handler: str  # the ``Handlers`` method that serves it
    summary: str
    body: dict[str, Any] | None = None  # JSON Schema of the request body; None: it takes none
    streams: bool = False  # can answer with server-sent events (``"stream": true``)
    batchable: bool = False  # concurrent requests may share one upstream call (micro-batching)
    per_run: bool = True  # also served under every root of ``ROOTS`` (a run's, a model's)
    json: bool = True  # answers JSON (``/metrics`` answers Prometheus text)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/healthz", "GET", "health", "Liveness: answers without touching disk or upstream", per_run=False
    ),
    Endpoint("/health", "GET", "health", "Liveness, under the name guidellm and vLLM use"),
    Endpoint("/v1/health", "GET", "health", "Liveness, under the API root"),
    Endpoint("/openapi.json", "GET", "openapi", "This description", per_run=False),
    Endpoint("/metrics", "GET", "metrics", "Prometheus metrics", per_run=False, json=False),
    Endpoint("/v1/models", "GET", "models", "The configured models"),
    Endpoint("/v1/models/{model_id:.+}", "GET", "model", "One configured model"),
    Endpoint("/v1/completions", "POST", "completion", "Text completion, cached", COMPLETION_BODY, True, True),
    Endpoint("/v1/chat/completions", "POST", "completion", "Chat completion, cached", CHAT_BODY, True),
    Endpoint("/v1/responses", "POST", "completion", "OpenAI Responses API, cached", RESPONSES_BODY, True),
    Endpoint("/v1/embeddings", "POST", "embeddings", "Embeddings, cached per input", EMBEDDINGS_BODY),
    Endpoint("/tokenizer_info", "GET", "tokenizer", "The model's tokenizer, as vLLM describes it"),
    Endpoint("/tokenize", "POST", "tokenizer", "Text to token ids, cached", TOKENIZE_BODY),
    Endpoint("/detokenize", "POST", "tokenizer", "Token ids to text, cached", DETOKENIZE_BODY),
    # The batch lane (gateway.batches): OpenAI's file and batch API, answered from the cache first.
    Endpoint("/v1/files", "POST", "upload_file", "Upload a batch input file (multipart: purpose, file)"),
    Endpoint("/v1/files", "GET", "list_files", "The run's files"),
    Endpoint("/v1/files/{file_id}", "GET", "get_file", "One file"),
    Endpoint("/v1/files/{file_id}/content", "GET", "file_content", "A file's JSONL", json=False),
    Endpoint(
        "/v1/batches", "POST", "create_batch", "Start a batch: cached lines now, misses sent once", BATCH_BODY
    ),
    Endpoint("/v1/batches", "GET", "list_batches", "The run's batches"),
    Endpoint("/v1/batches/{batch_id}", "GET", "get_batch", "One batch, polled"),
    Endpoint("/v1/batches/{batch_id}/cancel", "POST", "cancel_batch", "Cancel a batch"),
)

# Where the per-run endpoints are served: the root, a run's root, and a model's root in either,
# under which a request that names no model (lm-eval's remote tokenizer never does) means that model.
ROOTS = ("", "/runs/{run_id}", "/models/{model_name}", "/runs/{run_id}/models/{model_name}")


def roots_of(endpoint: Endpoint) -> tuple[str, ...]:
    """The roots ``endpoint`` is served under."""
    return ROOTS if endpoint.per_run else ("",)


# A path served by two methods (``/v1/batches``) is known by the row that takes a body: the validator's.
BY_PATH = {e.path: e for e in sorted(ENDPOINTS, key=lambda e: e.body is not None)}
# Tokenizer calls are cheap look-ups: reports count them apart from the answers they help build.
TOKENIZER_ENDPOINTS = frozenset(e.path for e in ENDPOINTS if e.handler == "tokenizer")
BATCHABLE_ENDPOINTS = frozenset(e.path for e in ENDPOINTS if e.batchable)


@cache
def _validator(path: str) -> Any:
    schema = BY_PATH[path].body
    assert schema is not None, f"{path} takes no body"
    return jsonschema_rs.validator_for(schema)


def validate_body(path: str, body: Any) -> dict[str, Any]:
    """``body`` if its endpoint's schema accepts it; else a 400 naming the first problem."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", "invalid_body")
    validator = _validator(path)
    if validator.is_valid(body):
        return body
    error = next(iter(validator.iter_errors(body)))
    where = "/".join(str(p) for p in error.instance_path)
    if type(error.kind).__name__ in ("Required", "AnyOf") and not where:
        raise bad_request(f"the body is missing a required field: {error.message}", "missing_field")
    raise bad_request(f"'{where or 'body'}' is invalid: {error.message}", "invalid_type")
