"""Request bodies, built byte-for-byte as lm-evaluation-harness's ``local-completions`` builds them.

So a task evaluated by lm-eval through the gateway and by this scorer hits the
same cache entries. Choices that decide the bytes, all from lm-eval 0.4.x:

* prompts are token-id lists (``[[ids]]``, one prompt per request) from the
  gateway's ``/tokenize``; generation contexts are left-truncated to
  ``max_length - 1 - max_gen_toks`` tokens, loglikelihood inputs to
  ``max_length - 1``;
* ``generate_until``: ``prompt, model, max_tokens, temperature, stop, seed``
  plus any other generation kwargs; ``stop`` is the task's ``until`` (lm-eval's
  concurrent path does not append the EOS string);
* ``loglikelihood``/``multiple_choice``: ``model, prompt, temperature 0,
  max_tokens 1, logprobs 1, seed, echo true``; trailing spaces of the context
  move to the continuation, and the continuation's ids are those of
  ``context + continuation`` after the context's own ids.

``repeats: n`` asks for ``n`` choices in one request (``"n": n``) so that
samples are one cache entry, not ``n`` identical keys.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from cache.keys import request_key
from scorer.tasks import TaskConfig
from scorer.tokenizer import Tokenizer

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
DEFAULT_MAX_GEN_TOKS = 256


@dataclass(frozen=True)
class Request:
    """One HTTP request to the gateway, and its cache key."""

    key: str
    endpoint: str
    body: dict[str, Any]
    ctxlen: int = 0  # loglikelihood: logprobs before this index belong to the context


@dataclass(frozen=True)
class ModelSettings:
    """What a run fixes about the model side of every request."""

    model: str
    upstream_model: str
    seed: int = 1234
    gen_kwargs: dict[str, Any] | None = None  # --gen-kwargs: override the task's


class RequestBuilder:
    """Builds the requests of one task for one model."""

    def __init__(self, task: TaskConfig, settings: ModelSettings, tokenizer: Tokenizer) -> None:
        self.task = task
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_length = int(task.raw["max_length"]) - 1  # lm-eval keeps one token for generation
        self._gen = self._generation_kwargs()

    def _request(self, endpoint: str, body: dict[str, Any], ctxlen: int = 0) -> Request:
        return Request(request_key(endpoint, self.settings.upstream_model, body), endpoint, body, ctxlen)

    def _generation_kwargs(self) -> dict[str, Any]:
        kwargs = copy.deepcopy(self.task.raw["generation_kwargs"] or {})
        kwargs.update(copy.deepcopy(self.settings.gen_kwargs or {}))
        return kwargs

    def generation_kwargs(self) -> dict[str, Any]:
        """The task's generation kwargs with the run's overrides applied (a fresh copy)."""
        return copy.deepcopy(self._gen)

    def generate(self, context: str) -> Request:
        """A ``generate_until`` request for ``context``."""
        gen = dict(self._gen)  # values are never mutated below, so a shallow copy is enough
        gen.pop("do_sample", None)
        truncate_for = int(gen.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        max_tokens = (
            gen.pop("max_tokens") if "max_tokens" in gen else gen.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
        )
        temperature = gen.pop("temperature", 0)
        until = gen.pop("until", None)
        stop = [until] if isinstance(until, str) else list(until or [])
        if self.task.raw["repeats"] > 1:
            gen["n"] = self.task.raw["repeats"]
        common = {"max_tokens": max_tokens, "temperature": temperature}
        if self.task.raw["api"] == "chat":
            body = {
                "messages": [{"role": "user", "content": context}],
                "model": self.settings.model,
                **common,
                "stop": stop[:4],
                "seed": self.settings.seed,
                **gen,
            }
            return self._request(CHAT, body)
        ids = self.tokenizer.encode(context)[-(self.max_length - truncate_for) :]
        body = {
            "prompt": [ids],
            "model": self.settings.model,
            **common,
            "stop": stop,
            "seed": self.settings.seed,
            **gen,
        }
        return self._request(COMPLETIONS, body)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's ``_encode_pair`` for causal models."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context)
        return context_ids, whole[len(context_ids) :]

    def loglikelihood(self, context: str, continuation: str) -> Request:
        """An echo+logprobs request scoring ``continuation`` after ``context``."""
        context_ids, continuation_ids = self.encode_pair(context, continuation)
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
