"""Token ids for prompts, as lm-evaluation-harness's remote tokenizer gets them.

The tokenizer lives behind the gateway (``POST /tokenize``, cached like any
other request), so the same text always has the same ids and the same cache
key. ``scorer run`` fills a :class:`TableTokenizer` from the gateway; ``scorer
score`` fills it from the cache alone. A :class:`RecordingTokenizer` lists
which texts a round needs before either is asked.
"""

from __future__ import annotations

from typing import Any, Protocol

from cache.keys import request_key

TOKENIZE = "/tokenize"


def tokenize_body(text: str) -> dict[str, Any]:
    """The body lm-eval's RemoteTokenizer posts (so both share cache entries)."""
    return {"prompt": text, "add_special_tokens": False}


def tokenize_key(upstream_model: str, text: str) -> str:
    """The cache key of tokenizing ``text``."""
    return request_key(TOKENIZE, upstream_model, tokenize_body(text))


class Tokenizer(Protocol):
    """Text → token ids."""

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, no special tokens added."""
        ...


class RecordingTokenizer:
    """Remembers every text asked for and answers with a placeholder id."""

    def __init__(self) -> None:
        self.texts: dict[str, None] = {}

    def encode(self, text: str) -> list[int]:
        """Record ``text``; the ids returned are placeholders, not to be used."""
        self.texts[text] = None
        return [0] * max(1, len(text) // 4)


class TableTokenizer:
    """Answers from a table filled beforehand; an unknown text is a bug, so it raises KeyError."""

    def __init__(self, table: dict[str, list[int]]) -> None:
        self.table = table

    def encode(self, text: str) -> list[int]:
        """The ids recorded for ``text``."""
        return self.table[text]
