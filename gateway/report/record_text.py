"""The words of a record: its prompt and its answer as plain text, for search, previews and diffs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def prompt_text(request: Any) -> str:
    """A request's prompt (completions) or its messages' contents (chat), newline-joined."""
    if not isinstance(request, dict):
        return ""
    prompt = request.get("prompt")
    if prompt is not None:
        return "\n".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
    messages = request.get("messages")
    if isinstance(messages, list):
        return "\n".join(_content(m.get("content")) for m in messages if isinstance(m, dict))
    text = request.get("text")  # /tokenize
    return str(text) if text is not None else ""


def answer_text(response: Any) -> str:
    """A response's generated text: each choice's text, message content and tool-call arguments."""
    if not isinstance(response, dict):
        return ""
    parts: list[str] = []
    for choice in response.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        message = choice.get("message")
        if isinstance(message, dict):
            parts.append(_content(message.get("content")))
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    return "\n".join(p for p in parts if p)


def error_code(record: Mapping[str, Any]) -> str | None:
    """The code of a record's error, if it failed."""
    error = record.get("error")
    if not error:
        return None
    return str(error.get("code") if isinstance(error, dict) else error)
