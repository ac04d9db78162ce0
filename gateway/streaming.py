"""Server-sent events: assembling a streamed answer into one response, and replaying one as a stream.

A streamed miss is recorded (and cached) as the response the same request
would have got without ``stream``; a later streamed hit is replayed from it as
an equivalent event stream: the same choices, text, logprobs and usage.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


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
            message = {"role": "assistant", "content": ""}
            return {"index": index, "message": message, "logprobs": None, "finish_reason": None}
        return {"index": index, "text": "", "logprobs": None, "finish_reason": None}

    @staticmethod
    def _add_chat(choice: dict[str, Any], part: dict[str, Any]) -> None:
        delta = part.get("delta") or {}
        message = choice["message"]
        if delta.get("role"):
            message["role"] = delta["role"]
        if delta.get("content"):
            message["content"] += delta["content"]
        for extra in ("reasoning_content", "refusal"):
            if delta.get(extra):
                message[extra] = message.get(extra, "") + delta[extra]
        if delta.get("tool_calls"):
            message.setdefault("tool_calls", []).extend(delta["tool_calls"])
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

    def response(self) -> dict[str, Any]:
        """The assembled non-streaming response."""
        return {
            "id": self.head.get("id"),
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            "choices": [self.choices[i] for i in sorted(self.choices)],
            "usage": self.usage,
        }


def replay_events(response: dict[str, Any], chat: bool, include_usage: bool) -> list[bytes]:
    """A stored response as the event stream that would have produced it."""
    head = {k: response.get(k) for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for choice in response.get("choices") or []:
        part: dict[str, Any] = {"index": choice.get("index", 0)}
        if chat:
            part["delta"] = {k: v for k, v in (choice.get("message") or {}).items() if v}
        else:
            part["text"] = choice.get("text", "")
        part["logprobs"] = choice.get("logprobs")
        part["finish_reason"] = choice.get("finish_reason")
        events.append(sse_event(orjson.dumps({**head, "choices": [part]})))
    if include_usage and response.get("usage"):
        events.append(sse_event(orjson.dumps({**head, "choices": [], "usage": response["usage"]})))
    events.append(DONE)
    return events
