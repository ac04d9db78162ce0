"""Embeddings are cached per input: one index entry per embedded input, whatever request it came in.

A request for 1,000 inputs of which 990 are cached sends only the 10 missing
ones upstream. Each input's entry is a one-item embeddings answer (its
``index`` 0, its own prompt tokens as usage), built by :func:`part_body` from
the upstream's answer; the client's answer is assembled from the entries in
its order. The record of a request lists the inputs it paid for (``parts``:
position in the answer, entry key, tokens), so ``gateway cache rebuild``
recreates the very same entries from the records alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

EMBEDDINGS = "/v1/embeddings"


def inputs_of(body: dict[str, Any]) -> list[Any]:
    """A request's inputs as a list: a string or one token-id list is a single input."""
    value = body["input"]
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(t, int) for t in value)
    ):
        return [value]
    return list(value)


def part_body(item: dict[str, Any], model: Any, tokens: int) -> bytes:
    """The index entry of one embedded input."""
    entry = {"object": "embedding", "index": 0, "embedding": item.get("embedding")}
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": [entry], "model": model, "usage": usage})


def token_shares(answer: dict[str, Any], inputs: list[Any]) -> list[int]:
    """Each input's prompt tokens: exact for token ids, else the answer's total shared by length."""
    total = (answer.get("usage") or {}).get("prompt_tokens")
    total = total if isinstance(total, int) and total >= 0 else 0
    sizes = [len(i) if isinstance(i, list | str) else 1 for i in inputs]
    if all(isinstance(i, list) for i in inputs):
        return sizes
    whole = sum(sizes) or 1
    return [round(total * size / whole) for size in sizes]


def assemble(parts: list[bytes]) -> dict[str, Any]:
    """The client's answer from its inputs' entries, in order."""
    data, tokens, model = [], 0, None
    for position, body in enumerate(parts):
        part = orjson.loads(body)
        data.append({**part["data"][0], "index": position})
        tokens += int((part.get("usage") or {}).get("prompt_tokens") or 0)
        model = part.get("model", model)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def entries(record: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """The index entries an embeddings record paid for: (key, body) per fetched input."""
    response = record["response"]
    found = []
    for position, key, tokens in record.get("parts") or []:
        found.append((key, part_body(response["data"][position], response.get("model"), tokens)))
    return found
