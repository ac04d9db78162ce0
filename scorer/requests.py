"""Request bodies, built byte-for-byte as lm-evaluation-harness's ``local-completions`` builds them.

So a task evaluated by lm-eval through the gateway and by this scorer hits the
same cache entries. Choices that decide the bytes, all from lm-eval 0.4.x:

* prompts are token-id lists (``[[ids]]``, one prompt per request) from the
  gateway's ``/tokenize``; generation contexts are left-truncated to
  ``max_length - 1 - max_gen_toks`` tokens, loglikelihood inputs to
  ``max_length - 1``;
* ``generate_until``: ``prompt, model, max_tokens, temperature, stop, seed``
  plus any other generation kwargs; ``stop`` is the task's ``until``, plus the
  tokenizer's EOS string when matching lm-eval's sequential path
  (``num_concurrent=1``, its default) — its concurrent path appends nothing;
* ``loglikelihood``/``multiple_choice``: ``model, prompt, temperature 0,
  max_tokens 1, logprobs 1, seed, echo true``; trailing spaces of the context
  move to the continuation, and the continuation's ids are those of
  ``context + continuation`` after the context's own ids.

``repeats: n`` asks for ``n`` choices in one request (``"n": n``) so that
samples are one cache entry, not ``n`` identical keys; every request is sent
with ``X-Sample-Index: 0``, so a sampling one is keyed as sample 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from cache.keys import KeySplice, canonical_fields, is_sampled, request_key, sample_key
from scorer.tasks import TaskConfig
from scorer.tokenizer import Tokenizer

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
DEFAULT_MAX_GEN_TOKS = 256


class Ask(NamedTuple):
    """What a document asks of the model, as text, before anything is tokenized.

    ``generate``: a continuation of ``context``; ``loglikelihood``: the logprob
    of ``continuation`` after ``context``; ``rolling``: the logprob of the
    whole ``context`` on its own, over rolling windows.
    """

    kind: Literal["generate", "loglikelihood", "rolling"]
    context: str
    continuation: str = ""


class Request(NamedTuple):
    """One HTTP request to the gateway, and its cache key."""

    key: str
    endpoint: str
    body: dict[str, Any]
    ctxlen: int = 0  # loglikelihood: logprobs before this index belong to the context


@dataclass(frozen=True)
class ModelSettings:
    """What a run fixes about the model side of every request."""

    model: str
    namespace: str  # the model's cache namespace, which keys name it by
    seed: int = 1234
    gen_kwargs: dict[str, Any] | None = None  # --gen-kwargs: override the task's
    eos: str | None = None  # added to every ``stop`` (lm-eval's sequential path); None: as the task says


def _sample_zero(key: str, endpoint: str, fields: dict[str, Any]) -> str:
    """The key the gateway gives a request sent with ``X-Sample-Index: 0`` (as the scorer sends all).

    A sampling request's ``n`` choices (``repeats``) are one draw of the
    request: pinning it to sample 0 keeps its key independent of arrival order.
    """
    return sample_key(key, 0) if is_sampled(endpoint, fields) else key


class RequestBuilder:
    """Builds the requests of one task for one model."""

    def __init__(
        self,
        task: TaskConfig,
        settings: ModelSettings,
        tokenizer: Tokenizer,
        prefix_token: int | None = None,
    ) -> None:
        self.task = task
        self.settings = settings
        self.tokenizer = tokenizer
        self.prefix_token = prefix_token  # rolling loglikelihood: what the first token is conditioned on
        self.max_length = int(task.raw["max_length"]) - 1  # lm-eval keeps one token for generation
        self._gen = self._generation_kwargs()
        # generate_until: (endpoint, shared body fields, the key of the varying field, truncation), built once
        self._generate: tuple[str, dict[str, Any], KeySplice, int] | None = None

    def _request(self, endpoint: str, body: dict[str, Any], ctxlen: int = 0) -> Request:
        return Request(request_key(endpoint, self.settings.namespace, body), endpoint, body, ctxlen)

    def _generation_kwargs(self) -> dict[str, Any]:
        kwargs = copy.deepcopy(self.task.raw["generation_kwargs"] or {})
        kwargs.update(copy.deepcopy(self.settings.gen_kwargs or {}))
        return kwargs

    def _generate_fields(self) -> tuple[str, dict[str, Any], int]:
        """The endpoint, the body fields every ``generate_until`` request shares, and the truncation."""
        gen = dict(self._gen)  # values are never mutated below, so a shallow copy is enough
        gen.pop("do_sample", None)
        truncate_for = int(gen.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        max_tokens = (
            gen.pop("max_tokens") if "max_tokens" in gen else gen.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
        )
        temperature = gen.pop("temperature", 0)
        until = gen.pop("until", None)
        stop = [until] if isinstance(until, str) else list(until or [])
        if (
            self.task.raw["api"] == "completions"
            and self.settings.eos is not None
            and self.settings.eos not in stop
        ):
            # lm-eval's handle_stop_sequences; local-chat-completions has no tokenizer, so no EOS string
            stop.append(self.settings.eos)
        if self.task.raw["repeats"] > 1:
            gen["n"] = self.task.raw["repeats"]
        common = {"max_tokens": max_tokens, "temperature": temperature}
        if self.task.raw["api"] == "chat":
            fields = {"model": self.settings.model, **common, "stop": stop[:4], "seed": self.settings.seed}
            return CHAT, {**fields, **gen}, truncate_for
        fields = {"model": self.settings.model, **common, "stop": stop, "seed": self.settings.seed}
        return COMPLETIONS, {**fields, **gen}, truncate_for

    def generate(self, context: str) -> Request:
        """A ``generate_until`` request for ``context``."""
        if self._generate is None:
            endpoint, fields, truncate_for = self._generate_fields()
            varying = "messages" if endpoint == CHAT else "prompt"
            splice = KeySplice(endpoint, self.settings.namespace, canonical_fields(fields), varying)
            self._generate = (endpoint, fields, splice, truncate_for)
        endpoint, fields, splice, truncate_for = self._generate
        if endpoint == CHAT:
            messages = [{"role": "user", "content": context}]
            return Request(
                _sample_zero(splice.key(messages), CHAT, fields), CHAT, {"messages": messages, **fields}
            )
        prompt = [self.tokenizer.encode(context)[-(self.max_length - truncate_for) :]]
        key = _sample_zero(splice.key(prompt), COMPLETIONS, fields)
        return Request(key, COMPLETIONS, {"prompt": prompt, **fields})

    def texts(self, ask: Ask) -> list[str]:
        """The texts building ``ask``'s requests tokenizes."""
        if ask.kind == "generate":
            return [] if self.task.raw["api"] == "chat" else [ask.context]
        if ask.kind == "rolling":
            return [ask.context]
        context, continuation = split_pair(ask.context, ask.continuation)
        return [context + continuation, context]

    def requests(self, ask: Ask) -> list[Request]:
        """The requests answering ``ask`` (several for a long rolling text)."""
        if ask.kind == "generate":
            return [self.generate(ask.context)]
        if ask.kind == "loglikelihood":
            return [self.loglikelihood(ask.context, ask.continuation)]
        return self.rolling(ask.context)

    def rolling(self, text: str) -> list[Request]:
        """lm-eval's ``loglikelihood_rolling``: disjoint windows of at most ``max_length - 1`` tokens.

        The first window is conditioned on the prefix token (BOS, else EOS, as
        lm-eval's remote tokenizer picks it); each later one on the tokens before it.
        """
        if self.prefix_token is None:
            raise ValueError("rolling loglikelihood needs the tokenizer's prefix token")
        requests = []
        for context_ids, predicted in rolling_windows(
            self.tokenizer.encode(text), self.prefix_token, self.max_length - 1
        ):
            requests.append(self.loglikelihood_pair(context_ids, predicted))
        return requests

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's ``_encode_pair`` for causal models."""
        context, continuation = split_pair(context, continuation)
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context)
        return context_ids, whole[len(context_ids) :]

    def loglikelihood(self, context: str, continuation: str) -> Request:
        """An echo+logprobs request scoring ``continuation`` after ``context``."""
        return self.loglikelihood_pair(*self.encode_pair(context, continuation))

    def loglikelihood_pair(self, context_ids: list[int], continuation_ids: list[int]) -> Request:
        """An echo+logprobs request for token ids, left-truncated as lm-eval truncates."""
        total = len(context_ids) + len(continuation_ids)
        ids = (context_ids + continuation_ids)[-self.max_length :]
        ctxlen = len(context_ids) - max(0, total - self.max_length)
        return self.loglikelihood_tokens(ids, ctxlen)

    def loglikelihood_tokens(self, ids: list[int], ctxlen: int) -> Request:
        """An echo+logprobs request over ``ids`` whose first ``ctxlen`` are context."""
        body = {
            "model": self.settings.model,
            "prompt": [ids],
            "temperature": 0,
            "max_tokens": 1,
            "logprobs": 1,
            "seed": self.settings.seed,
            "echo": True,
        }
        return self._request(COMPLETIONS, body, ctxlen)


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """Trailing spaces of ``context`` moved to the front of ``continuation``, as lm-eval does."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def rolling_windows(
    tokens: list[int], prefix_token: int, max_seq_len: int
) -> list[tuple[list[int], list[int]]]:
    """lm-eval's ``get_rolling_token_windows`` (context length 1) made disjoint: ``(context, predicted)``.

    Every token of ``tokens`` is predicted exactly once; each window's input is
    at most ``max_seq_len`` tokens.
    """
    windows: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return windows
    first = min(max_seq_len, len(tokens))
    raw = [([prefix_token] + tokens[: first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        length = min(len(tokens) - predicted, max_seq_len)
        end = predicted + length
        raw.append((tokens[max(0, end - max_seq_len - 1) : end - 1], tokens[end - length : end]))
        predicted += length
    for context_ids, predicted_ids in raw:
        windows.append((context_ids[: len(context_ids) - (len(predicted_ids) - 1)], predicted_ids))
    return windows
