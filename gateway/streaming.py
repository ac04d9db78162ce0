"""Server-sent events: assembling a streamed answer into one response, and replaying one as a stream.

A streamed miss is recorded (and cached) as the response the same request
would have got without ``stream``; a later streamed hit is replayed from it as
an equivalent event stream: the same choices, text, logprobs and usage.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
RESPONSES = "/v1/responses"
# Responses API events that end an answer; the event carries the whole response.
_FINAL = ("response.completed", "response.incomplete")


def carries_answer(endpoint: str, chunk: dict[str, Any]) -> bool:
    """Whether a stream event is part of the answer (a usage-only chunk is not)."""
    if endpoint == RESPONSES:
        return str(chunk.get("type", "")).startswith("response.")
    return bool(chunk.get("choices"))


def assembler_for(endpoint: str) -> StreamAssembler | ResponsesAssembler:
    """What folds ``endpoint``'s stream into the answer the same request without ``stream`` gets."""
    if endpoint == RESPONSES:
        return ResponsesAssembler()
    return StreamAssembler(endpoint.endswith("/chat/completions"))


def sse_event(payload: bytes) -> bytes:
    """One server-sent event carrying ``payload``."""
    return b"data: " + payload + b"\n\n"


class StreamAssembler:
    """Folds the chunks of a chat or text completion stream into one response object."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold one parsed chunk in."""
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for part in chunk.get("choices") or []:
            choice = self.choices.setdefault(part.get("index", 0), self._empty(part.get("index", 0)))
            if part.get("finish_reason") is not None:
                choice["finish_reason"] = part["finish_reason"]
            if "stop_reason" in part:
                choice["stop_reason"] = part["stop_reason"]
            if self.chat:
                self._add_chat(choice, part)
            else:
                self._add_text(choice, part)

    def _empty(self, index: int) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {}  # filled from the deltas; defaults in response()
            return {"index": index, "message": message, "logprobs": None, "finish_reason": None}
        return {"index": index, "text": "", "logprobs": None, "finish_reason": None}

    @staticmethod
    def _add_chat(choice: dict[str, Any], part: dict[str, Any]) -> None:
        delta = part.get("delta")
        if isinstance(delta, dict):
            accumulate_delta(choice["message"], delta)
        content = (part.get("logprobs") or {}).get("content")
        if content:
            choice["logprobs"] = choice["logprobs"] or {"content": []}
            choice["logprobs"]["content"].extend(content)

    @staticmethod
    def _add_text(choice: dict[str, Any], part: dict[str, Any]) -> None:
        choice["text"] += part.get("text") or ""
        logprobs = part.get("logprobs")
        if logprobs:
            merged = choice["logprobs"] = choice["logprobs"] or {}
            for field, values in logprobs.items():
                if isinstance(values, list):
                    merged.setdefault(field, []).extend(values)

    def incomplete_reason(self) -> str | None:
        """Why the stream so far is not a whole answer (no choice, or one never finished), else None."""
        if not self.choices:
            return "the stream carried no choice"
        unfinished = [i for i, choice in sorted(self.choices.items()) if choice["finish_reason"] is None]
        if unfinished:
            return f"the stream ended before choice {unfinished[0]} finished"
        return None

    def response(self) -> dict[str, Any]:
        """The assembled non-streaming response: what the same request without ``stream`` returns."""
        choices = []
        for i in sorted(self.choices):
            choice = self.choices[i]
            if self.chat:
                message = {"role": "assistant", **choice["message"]}
                if message.get("tool_calls"):
                    # Deltas carry each call's index; a whole message lists its calls in order.
                    message["tool_calls"] = [
                        {k: v for k, v in call.items() if k != "index"} for call in message["tool_calls"]
                    ]
                    message.setdefault("content", None)
                else:
                    message.setdefault("content", "")
                choice = {**choice, "message": message}
            choices.append(choice)
        return {
            "id": self.head.get("id"),
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            "choices": choices,
            "usage": self.usage,
        }


def accumulate_delta(acc: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Fold one chat ``delta`` into ``acc`` exactly as the openai SDK's stream helpers do.

    Strings concatenate (content, reasoning, a tool call's ``arguments``),
    ``index`` and ``type`` are replaced, objects merge, and lists of objects
    (``tool_calls``) merge entry by entry on their ``index``: one entry per tool
    call with its ``id``, ``type``, ``function.name`` and whole ``arguments``.
    """
    for key, value in delta.items():
        if acc.get(key) is None:
            if _has_indexed_entries(value):
                acc[key] = []  # even the first list must merge: one delta can hold two fragments
            else:
                acc[key] = value
                continue
        current = acc[key]
        if key in ("index", "type", "role"):  # labels, not text (some upstreams repeat the role)
            acc[key] = value
        elif isinstance(current, str) and isinstance(value, str):
            acc[key] = current + value
        elif isinstance(current, dict) and isinstance(value, dict):
            accumulate_delta(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            if not _has_indexed_entries(value):
                current.extend(value)
                continue
            for entry in value:
                index = entry.get("index") if isinstance(entry, dict) else None
                if not isinstance(index, int):
                    raise ValueError(f"a streamed list entry has no integer index: {entry!r}")
                position = next((n for n, e in enumerate(current) if e.get("index") == index), None)
                if position is None:
                    current.append(accumulate_delta({}, entry))
                else:
                    accumulate_delta(current[position], entry)
        elif value is not None:
            acc[key] = value
    return acc


def _has_indexed_entries(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(e, dict) and "index" in e for e in value)


def replay_events(response: dict[str, Any], endpoint: str, include_usage: bool) -> list[bytes]:
    """A stored response as the event stream that would have produced it."""
    if endpoint == RESPONSES:
        return replay_response_events(response)
    chat = endpoint.endswith("/chat/completions")
    head = {k: response.get(k) for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for choice in response.get("choices") or []:
        part: dict[str, Any] = {"index": choice.get("index", 0)}
        if chat:
            part["delta"] = _delta_of(choice.get("message") or {})
        else:
            part["text"] = choice.get("text", "")
        part["logprobs"] = choice.get("logprobs")
        part["finish_reason"] = choice.get("finish_reason")
        events.append(sse_event(orjson.dumps({**head, "choices": [part]})))
    if include_usage and response.get("usage"):
        events.append(sse_event(orjson.dumps({**head, "choices": [], "usage": response["usage"]})))
    events.append(DONE)
    return events


def _delta_of(message: dict[str, Any]) -> dict[str, Any]:
    """A whole message as one delta; tool calls get the ``index`` a streamed delta carries."""
    delta = {k: v for k, v in message.items() if v}
    if isinstance(delta.get("tool_calls"), list):
        delta["tool_calls"] = [
            {"index": i, **call} for i, call in enumerate(delta["tool_calls"]) if isinstance(call, dict)
        ]
    return delta


class ResponsesAssembler:
    """A Responses API stream's answer: the response its ``response.completed`` event carries."""

    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold one parsed event in."""
        if chunk.get("type") in _FINAL and isinstance(chunk.get("response"), dict):
            self.final = chunk["response"]

    def incomplete_reason(self) -> str | None:
        """Why the stream is not a whole answer (it never completed), else None."""
        return None if self.final is not None else "the stream ended before response.completed"

    def response(self) -> dict[str, Any]:
        """The completed response."""
        return self.final if self.final is not None else {}


def replay_response_events(response: dict[str, Any]) -> list[bytes]:
    """A stored Responses API answer as the event stream the openai SDK's stream helpers accept."""
    events: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    emit("response.created", response={**response, "status": "in_progress", "output": []})
    emit("response.in_progress", response={**response, "status": "in_progress", "output": []})
    for out, item in enumerate(response.get("output") or []):
        if not isinstance(item, dict):
            continue
        parts = item.get("content") if item.get("type") == "message" else None
        emit("response.output_item.added", output_index=out, item={**item, "content": []} if parts else item)
        for at, part in enumerate(parts or []):
            where = {"item_id": item.get("id"), "output_index": out, "content_index": at}
            text = part.get("text") if part.get("type") == "output_text" else None
            emit("response.content_part.added", **where, part={**part, "text": ""} if text else part)
            if text:
                emit("response.output_text.delta", **where, delta=text, logprobs=[])
                emit("response.output_text.done", **where, text=text, logprobs=[])
            emit("response.content_part.done", **where, part=part)
        emit("response.output_item.done", output_index=out, item=item)
    emit("response.completed", response=response)  # as vLLM ends every stream, its status inside
    return [sse_event(orjson.dumps(event)) for event in events]
