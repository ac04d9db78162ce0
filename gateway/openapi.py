"""The gateway's OpenAPI description, served at ``/openapi.json``.

It states what the validation in ``gateway.validation`` enforces (field types,
required fields, limits) and that every failure is the OpenAI error object, so
schema-driven fuzzers (schemathesis) can check both sides.
"""

from __future__ import annotations

from typing import Any

from gateway.config import GatewayConfig
from gateway.validation import MAX_N

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_NUMBER = {"type": ["number", "null"]}
_STOP = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]}
_TOKENS = {"type": "array", "items": {"type": "integer"}, "minItems": 1}


def _common(models: list[str]) -> dict[str, Any]:
    return {
        "model": {"type": "string", "enum": models},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": ["integer", "null"], "minimum": 0},
        "temperature": _NUMBER,
        "top_p": _NUMBER,
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_N},
        "seed": {"type": ["integer", "null"]},
        "stop": _STOP,
    }


def _bodies(models: list[str]) -> dict[str, Any]:
    chat = {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_common(models),
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {"role": {"type": "string"}, "content": {"type": ["string", "null"]}},
                },
            },
            "logprobs": {"type": ["boolean", "null"]},
        },
    }
    completion = {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            **_common(models),
            "prompt": {
                "oneOf": [
                    {"type": "string"},
                    _TOKENS,
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    {"type": "array", "items": _TOKENS, "minItems": 1},
                ]
            },
            "echo": {"type": ["boolean", "null"]},
            "logprobs": {"type": ["integer", "null"], "minimum": 0},
        },
    }
    return {"/v1/chat/completions": chat, "/v1/completions": completion}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_ERRORS = {"default": {"description": "an OpenAI-style error", **_json(ERROR)}}
_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
}


def openapi(config: GatewayConfig) -> dict[str, Any]:
    """The description of a gateway serving ``config``."""
    models = [m.name for m in config.models]
    paths: dict[str, Any] = {
        "/healthz": {"get": {"responses": {"200": {"description": "alive", **_json({"type": "object"})}}}}
    }
    for prefix, params in (("", []), ("/runs/{run_id}", [_RUN_ID])):
        ok_json = {"description": "the upstream's answer (or the cached one)", **_json({"type": "object"})}
        for endpoint, body in _bodies(models).items():
            ok = {
                "description": ok_json["description"],
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {}},  # events: JSON chunks, then [DONE]
                },
            }
            paths[prefix + endpoint] = {
                "post": {
                    "parameters": params,
                    "requestBody": {"required": True, **_json(body)},
                    "responses": {"200": ok, **_ERRORS},
                }
            }
        paths[prefix + "/v1/models"] = {
            "get": {"parameters": params, "responses": {"200": ok_json, **_ERRORS}}
        }
        paths[prefix + "/tokenizer_info"] = {
            "get": {"parameters": params, "responses": {"200": ok_json, **_ERRORS}}
        }
        tokenize = {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}
        detokenize = {"type": "object", "required": ["tokens"], "properties": {"tokens": _TOKENS}}
        for endpoint, schema in (("/tokenize", tokenize), ("/detokenize", detokenize)):
            paths[prefix + endpoint] = {
                "post": {
                    "parameters": params,
                    "requestBody": {"required": True, **_json(schema)},
                    "responses": {"200": ok_json, **_ERRORS},
                }
            }
    return {
        "openapi": "3.1.0",
        "info": {"title": "replaygate gateway", "version": "1"},
        "paths": paths,
    }
