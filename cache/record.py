"""The run record: one JSONL line per answered request, its fields, how it was served, and its JSON form.

Every record is built in one place, ``Pipeline._record`` (gateway/pipeline.py),
as a :class:`Record` literal that mypy checks field by field; it is written by
:func:`to_json` and read back by :func:`from_json`. At run time a record is a plain dict: building one costs
a dict literal and orjson writes it without a conversion step, so the type
costs the hot path nothing (a builder function taking 24 keyword arguments
measured 20-100% slower than the literal). Readers accept every older line: fields added since
schema 0 get the default a record without them meant (see :data:`DEFAULTS`).

How a request was served is one word of :data:`SERVED`. :data:`PAID` are the
fresh upstream answers (a request's own call, alone, in a micro-batch, or in a
provider's batch through the batch lane): they
cost tokens, go into the cache index and are what a rebuild replays.
:data:`COPIES` are answers someone else paid for (a cache hit, or a share of an
identical in-flight call): they cost nothing and save what a miss would have
cost.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypedDict, cast

import orjson

RECORD_SCHEMA: Final = 1

Served = Literal["miss", "hit", "coalesced", "batched", "batch"]
SERVED: Final[tuple[Served, ...]] = ("miss", "hit", "coalesced", "batched", "batch")
# Fresh upstream answers (online alone, micro-batched, or through a provider's batch API):
# they cost tokens, fill the cache.
PAID: Final = frozenset({"miss", "batched", "batch"})
COPIES: Final = frozenset({"hit", "coalesced"})  # answers another request paid for


class _Fields(TypedDict):
    """The fields every record has."""

    schema: int
    key: str  # the cache key (a sample's own key for sampling requests)
    run_id: str
    ts: float  # when the request arrived (epoch seconds)
    ts_end: float  # when its record was written
    latency_ms: float
    endpoint: str  # e.g. /v1/chat/completions
    model: str  # the configured name clients use
    upstream_model: str
    provider: str
    served: Served
    stream: bool
    cacheable: bool  # False for ``Cache-Control: no-store`` style bypasses
    status: int  # HTTP status the client got
    request: Any  # the body sent upstream
    response: Any  # the answer body (an orjson.Fragment when written), None on failure or by reference
    usage: dict[str, int] | None
    attempts: int  # upstream attempts, retries included
    failed_attempts: list[dict[str, Any]]
    error: dict[str, Any] | None  # the OpenAI-style error object of a failure
    task: str | None
    ttft_ms: float | None  # to the first upstream event of a stream
    sample: int | None
    sample_of: str | None


class Record(_Fields, total=False):
    """One answered request, as written to its run's JSONL shard (these fields only some records have)."""

    cost_usd: float | None  # added by pricing; None: the model's price is unknown
    cost_saved_usd: float | None
    usage_counted: bool  # the gateway counted the tokens itself
    parts: list[list[Any]]  # embeddings: the inputs this request paid for
    response_ref: str  # a hit's response is that of the earlier line with this key


# What a field absent from an older record meant.
DEFAULTS: Final[dict[str, Any]] = {
    "schema": 0,
    "stream": False,
    "cacheable": True,
    "request": None,
    "response": None,
    "usage": None,
    "attempts": 0,
    "failed_attempts": [],
    "error": None,
    "task": None,
    "ttft_ms": None,
    "sample": None,
    "sample_of": None,
}


def to_json(record: Record) -> bytes:
    """The record's JSONL line, newline included."""
    return orjson.dumps(record) + b"\n"


def _upgrade(raw: dict[str, Any]) -> Record:
    """A parsed line as a current :class:`Record`: fields an older schema lacked get their defaults.

    A line of the current schema is returned as is (no copy, no key walk).
    """
    if raw.get("schema") != RECORD_SCHEMA:
        for name, value in DEFAULTS.items():
            if name not in raw:
                raw[name] = list(value) if isinstance(value, list) else value
    return cast(Record, raw)


def from_json(line: bytes) -> Record:
    """Parse one JSONL line into a :class:`Record`; ValueError when it is not a JSON object."""
    raw = orjson.loads(line)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return _upgrade(raw)
