"""Canonical request keys: one sha256 per request that would make the model say the same thing.

The key covers the endpoint, the model's cache namespace and every body field
that can change the output. Fields that cannot (streaming, client metadata,
timeouts) are left out, so a streamed and a plain request share one entry.

The namespace names the deployment that answers (:func:`deployment_namespace`:
provider, normalised ``api_base``, upstream model, checkpoint), so two
deployments that happen to share a model name never share answers; a model's
``cache_namespace`` overrides it when several deployments really serve the
same weights (replicas, a server that moved port).
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import orjson

# Bump when the canonical form changes: old keys then simply miss.
# 2: the model is named by its deployment namespace, not its upstream name alone.
KEY_SCHEMA = 2

# Body fields that change how a response is delivered or labelled, never what it says.
DELIVERY_FIELDS = frozenset(
    {
        "model",  # replaced by the resolved upstream model
        "stream",
        "stream_options",
        "user",
        "metadata",
        "timeout",
        "request_timeout",
        "request_id",
        "store",
        "service_tier",
        "api_key",  # a secret, never part of a key (and never forwarded)
    }
)


# The largest integer a canonical key can carry (orjson's limit).
_INT_RANGE = 2**63


def _normalise(value: Any) -> Any:
    # 0 and 0.0 are the same JSON number; clients differ in which they send. (1e20 stays a float:
    # no JSON tool carries it as an integer.)
    if isinstance(value, float) and value.is_integer() and abs(value) < _INT_RANGE:
        return int(value)
    return value


def canonical_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The part of a request body that decides its answer."""
    return {k: _normalise(v) for k, v in body.items() if k not in DELIVERY_FIELDS}


# Endpoints whose answers are drawn from a distribution (the others are functions of the request).
SAMPLED_ENDPOINTS = frozenset({"/v1/completions", "/v1/chat/completions"})


def is_sampled(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether a request samples: a generating endpoint with ``temperature`` absent or above 0.

    Only the temperature decides (the API's default is 1), whatever ``seed``
    or ``top_k`` say: a request that samples is one draw, and k of them are k
    draws, each with a key of its own (:func:`sample_key`).
    """
    if endpoint not in SAMPLED_ENDPOINTS:
        return False
    temperature = body.get("temperature")
    return temperature is None or (isinstance(temperature, int | float) and temperature > 0)


def sample_key(key: str, index: int) -> str:
    """The key of sample ``index`` of the sampling request whose key is ``key``."""
    return hashlib.sha256(f"{key}/sample/{index}".encode()).hexdigest()


def deployment_namespace(
    provider: str, api_base: str | None, upstream_model: str, checkpoint: Any = None
) -> str:
    """The namespace of one deployment: ``upstream_model@`` and a digest of where it is served.

    ``api_base`` is normalised (scheme and host lower-cased, default port and
    trailing ``/`` dropped) so spelling a URL differently is not another
    deployment; ``checkpoint`` is what an in-process engine loads. The digest
    keeps URLs out of ``/v1/models``, where clients read the namespace.
    """
    identity = [provider, _normalise_base(api_base), upstream_model, checkpoint]
    digest = hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return f"{upstream_model}@{digest}"


def _normalise_base(api_base: str | None) -> str:
    if not api_base:
        return ""
    parts = urlsplit(api_base.strip())
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"


def request_key(endpoint: str, namespace: str, body: dict[str, Any], salt: str | None = None) -> str:
    """The cache key of a request: sha256 hex of its canonical JSON.

    Args:
        endpoint: the API path without run prefix, e.g. ``/v1/completions``.
        namespace: the model's cache namespace (``ModelConfig.key_namespace``).
        body: the request body as the client sent it.
        salt: an ``X-Cache-Salt`` value; a different salt is a different key.
    """
    return canonical_key(endpoint, namespace, canonical_fields(body), salt)


def _canonical_json(endpoint: str, namespace: str, canonical_body: dict[str, Any], salt: str | None) -> bytes:
    """The bytes a key hashes: the schema version, endpoint, namespace, body and salt, keys sorted."""
    canonical: dict[str, Any] = {
        "v": KEY_SCHEMA,
        "endpoint": endpoint,
        "namespace": namespace,
        "body": canonical_body,
    }
    if salt:
        canonical["salt"] = salt
    return orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)


def canonical_key(
    endpoint: str, namespace: str, canonical_body: dict[str, Any], salt: str | None = None
) -> str:
    """:func:`request_key` of a body already in canonical form (as :func:`canonical_fields` returns it).

    For callers that key many bodies differing in one field: canonicalise the
    shared fields once, add the varying one, and key each with this. Equal to
    ``request_key(endpoint, namespace, body, salt)`` whenever
    ``canonical_body == canonical_fields(body)``.
    """
    return hashlib.sha256(_canonical_json(endpoint, namespace, canonical_body, salt)).hexdigest()


# Stands in for the varying field while a splice is made; JSON-encodes as itself (no escapes).
_HOLE = "replaygate-key-splice-hole-7f3a9c"


class KeySplice:
    """:func:`canonical_key` of many bodies that differ in one field, without building a dict per body.

    The canonical JSON of ``{**canonical_fields, field: value}`` is serialised
    once with a hole where ``field``'s value goes; each key is then the sha256
    of the bytes before the hole, ``value`` serialised as :func:`request_key`
    serialises it (sorted keys, integral floats as ints), and the bytes after.
    Byte for byte the same JSON, so ``splice.key(v) ==
    canonical_key(endpoint, namespace, {**canonical_fields, field: v}, salt)``.
    """

    def __init__(
        self,
        endpoint: str,
        namespace: str,
        canonical_fields: dict[str, Any],
        field: str,
        salt: str | None = None,
    ) -> None:
        if field in DELIVERY_FIELDS:
            raise ValueError(f"{field!r} is not part of a key")
        whole = _canonical_json(endpoint, namespace, {**canonical_fields, field: _HOLE}, salt)
        hole = orjson.dumps(_HOLE)
        if whole.count(hole) != 1:
            raise ValueError("the splice hole appears in the shared fields")
        self.prefix, self.suffix = whole.split(hole)

    def key(self, value: Any) -> str:
        """The cache key of the body whose varying field is ``value``."""
        if type(value) is float:
            value = _normalise(value)
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(self.prefix + data + self.suffix).hexdigest()
