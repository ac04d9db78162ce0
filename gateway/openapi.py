"""The gateway's OpenAPI description, served at ``/openapi.json``, generated from ``gateway.endpoints``.

Each body schema is the very one the validator enforces (plus the configured
model names as an enum, so fuzzers pick real ones), and every failure is the
OpenAI error object, so schema-driven fuzzers (schemathesis) can check both sides.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.config import GatewayConfig
from gateway.endpoints import ENDPOINTS, Endpoint, roots_of

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
RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
}
_ERRORS = {
    "default": {"description": "an OpenAI-style error", "content": {"application/json": {"schema": ERROR}}}
}
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")  # aiohttp's {name:regex} → OpenAPI's {name}


def openapi_path(route: str) -> str:
    """An aiohttp route path as OpenAPI writes it."""
    return _PARAM.sub(r"{\1}", route)


def _operation(endpoint: Endpoint, models: list[str], root: str) -> dict[str, Any]:
    params = [
        RUN_ID
        if name == "run_id"
        else {"name": name, "in": "path", "required": True, "schema": {"type": "string", "enum": models}}
        if name == "model_name"
        else {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(root + endpoint.path)
    ]
    content: dict[str, Any] = (
        {"application/json": {"schema": {"type": "object"}}}
        if endpoint.json
        else {"text/plain": {"schema": {"type": "string"}}}
    )
    if endpoint.streams:
        content["text/event-stream"] = {"schema": {}}  # events: JSON chunks, then [DONE]
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "parameters": params,
        "responses": {"200": {"description": endpoint.summary, "content": content}, **_ERRORS},
    }
    if endpoint.body is not None:
        schema = dict(endpoint.body)
        properties = dict(schema.get("properties", {}))
        if "model" in properties:
            properties["model"] = {"type": "string", "enum": models}
        schema["properties"] = properties
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return operation


def openapi(config: GatewayConfig) -> dict[str, Any]:
    """The description of a gateway serving ``config``: every row of the endpoint table, at every root."""
    models = [m.name for m in config.models]
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        for root in roots_of(endpoint):
            path = openapi_path(root + endpoint.path)
            paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint, models, root)
    return {"openapi": "3.1.0", "info": {"title": "replaygate gateway", "version": "1"}, "paths": paths}
