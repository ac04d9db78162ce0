"""Token ids for prompts, as lm-evaluation-harness's remote tokenizer gets them.

The tokenizer lives behind the gateway (``POST /tokenize``, cached like any
other request), so the same text always has the same ids and the same cache
key. ``scorer run`` fills a :class:`TableTokenizer` from the gateway; ``scorer
score`` fills it from the cache alone, with the texts :func:`scorer.rounds.texts_of`
lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol

from cache.keys import KeySplice, request_key

TOKENIZE = "/tokenize"
TOKENIZER_INFO = "/tokenizer_info"


def tokenize_body(text: str) -> dict[str, Any]:
    """The body lm-eval's RemoteTokenizer posts (so both share cache entries)."""
    return {"prompt": text, "add_special_tokens": False}


def tokenize_key(namespace: str, text: str) -> str:
    """The cache key of tokenizing ``text``."""
    return _tokenize_splice(namespace).key(text)


@lru_cache(maxsize=16)
def _tokenize_splice(namespace: str) -> KeySplice:
    # the body has no delivery field and no float: it is its own canonical form
    shared = tokenize_body("")
    del shared["prompt"]
    return KeySplice(TOKENIZE, namespace, shared, "prompt")


def tokenizer_info_key(namespace: str) -> str:
    """The cache key of ``GET /tokenizer_info`` (a body-less request) for a model's cache ``namespace``."""
    return request_key(TOKENIZER_INFO, namespace, {})


def _special(info: dict[str, Any], name: str) -> str | None:
    text = info.get(name)
    return text if isinstance(text, str) and text else None


def prefix_texts(info: dict[str, Any], known: Mapping[str, list[int]]) -> list[str]:
    """The text :func:`prefix_token` must tokenize next, given the ids ``known`` already ([] when none).

    lm-eval evaluates ``bos_token_id or eos_token_id``: EOS is tokenized only
    when there is no BOS or its id is 0, so a model with a BOS costs one
    ``/tokenize``, not two. Call until it returns [], tokenizing what it names.
    """
    bos, eos = _special(info, "bos_token"), _special(info, "eos_token")
    if bos is not None:
        if bos not in known:
            return [bos]
        if known[bos][:1] != [0]:
            return []
    return [eos] if eos is not None and eos not in known else []


def prefix_token(info: dict[str, Any], tokenizer: Tokenizer) -> int | None:
    """What rolling loglikelihood conditions the first token on, as lm-eval's remote tokenizer picks it.

    ``bos_token_id or eos_token_id``, each the first id of tokenizing its string
    (so a BOS id of 0 falls through to EOS, as it does in lm-eval); EOS is not
    tokenized when BOS decides.
    """
    bos, eos = _special(info, "bos_token"), _special(info, "eos_token")
    bos_id = tokenizer.encode(bos)[0] if bos is not None else None
    if bos_id:
        return bos_id
    return tokenizer.encode(eos)[0] if eos is not None else None


def eos_string(info: dict[str, Any]) -> str | None:
    """The EOS string lm-eval's sequential path adds to ``until`` (its remote tokenizer's ``eos_token``)."""
    return _special(info, "eos_token")


class Tokenizer(Protocol):
    """Text → token ids."""

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, no special tokens added."""
        ...


class TableTokenizer:
    """Answers from a table filled beforehand; an unknown text is a bug, so it raises KeyError."""

    def __init__(self, table: dict[str, list[int]]) -> None:
        self.table = table

    def encode(self, text: str) -> list[int]:
        """The ids recorded for ``text``."""
        return self.table[text]
