"""Micro-batching: concurrent ``/v1/completions`` requests that differ only in their prompt
become one upstream call with a list of prompts, split back by choice ``index``.

vLLM's server schedules a list of prompts in one engine step, so lm-eval's
thousands of single-prompt loglikelihood requests run several times faster
batched. A group leaves when ``max_batch`` prompts have gathered or
``window`` has passed since its first one, whichever is first. Each client gets
the response it would have got alone: its own choices (re-indexed from 0) and
its share of the usage (exact prompt tokens for token-id prompts, else a share
by prompt length; completion tokens split evenly).

A batch fails only as its members would alone: an answer without exactly one
choice per prompt is a failed attempt, retried like a 5xx (502
``upstream_invalid_response`` at the last), and a list the upstream refuses
with a 4xx is asked again prompt by prompt, so only the prompt at fault gets
the refusal (see ``gateway.upstream``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.tokens import trusted_usage

# Sends a merged body; returns the upstream's JSON and a note every waiter gets (its attempts).
Send = Callable[[dict[str, Any]], Awaitable[tuple[dict[str, Any], Any]]]
Part = tuple[dict[str, Any], Any]


def single_prompt(body: dict[str, Any]) -> str | list[int] | None:
    """The one prompt of a batchable body (unwrapping ``[p]``), or None if it cannot be batched."""
    if body.get("stream") or (body.get("n") or 1) != 1 or (body.get("best_of") or 1) != 1:
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return prompt
    return None


@dataclass
class _Group:
    params: dict[str, Any]
    prompts: list[str | list[int]] = field(default_factory=list)
    waiters: list[asyncio.Future[Part]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class MicroBatcher:
    """Gathers batchable bodies per parameter set and sends each group once."""

    def __init__(self, window_s: float, max_batch: int, send: Send) -> None:
        self.window_s = window_s
        self.max_batch = max_batch
        self.send = send
        self._groups: dict[bytes, _Group] = {}
        self.calls = 0

    async def submit(self, body: dict[str, Any], prompt: str | list[int]) -> Part:
        """This body's own response (and the call's note), from a shared upstream call."""
        params = {k: v for k, v in body.items() if k != "prompt"}
        kind = "text" if isinstance(prompt, str) else "tokens"  # one call cannot mix them
        group_key = orjson.dumps([kind, params], option=orjson.OPT_SORT_KEYS)
        group = self._groups.get(group_key)
        if group is None:
            group = self._groups[group_key] = _Group(params)
            group.timer = asyncio.get_running_loop().call_later(self.window_s, self._flush, group_key)
        waiter: asyncio.Future[Part] = asyncio.get_running_loop().create_future()
        group.prompts.append(prompt)
        group.waiters.append(waiter)
        if len(group.prompts) >= self.max_batch:
            self._flush(group_key)
        return await asyncio.shield(waiter)

    def _flush(self, group_key: bytes) -> None:
        group = self._groups.pop(group_key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        asyncio.ensure_future(self._send(group))

    async def _send(self, group: _Group) -> None:
        self.calls += 1
        try:
            data, note = await self.send({**group.params, "prompt": group.prompts})
            parts = split(data, group.prompts)
        except asyncio.CancelledError:  # the loop is ending: nobody is left to hear an error
            for waiter in group.waiters:
                waiter.cancel()
            raise
        except BaseException as exc:  # every waiter hears the one failure
            for waiter in group.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter, part in zip(group.waiters, parts, strict=True):
            if not waiter.done():
                waiter.set_result((part, note))


def choices_by_prompt(data: Any, count: int) -> dict[int, dict[str, Any]]:
    """A batched answer's choices by prompt index; ValueError unless there is exactly one per prompt."""
    listed = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
        raise ValueError(f"batched answer has no list of choice objects for {count} prompts")
    choices = {c.get("index", i): c for i, c in enumerate(listed)}
    if len(listed) != count or set(choices) != set(range(count)):
        indices = [c.get("index", i) for i, c in enumerate(listed)]
        raise ValueError(f"batched answer has choices {indices} for {count} prompts")
    return choices


def split(data: dict[str, Any], prompts: list[str | list[int]]) -> list[dict[str, Any]]:
    """One response per prompt from a batched response (choices matched by ``index``)."""
    choices = choices_by_prompt(data, len(prompts))
    usage = trusted_usage(data.get("usage"))  # untrusted: each member's record counts its own
    shares = _prompt_shares(prompts)
    head = {k: v for k, v in data.items() if k not in ("choices", "usage")}
    parts = []
    for i in range(len(prompts)):
        choice = {**choices[i], "index": 0}
        part = {**head, "choices": [choice]}
        if usage:
            part["usage"] = _usage_share(usage, prompts[i], shares[i], len(prompts))
        parts.append(part)
    return parts


def _prompt_shares(prompts: list[str | list[int]]) -> list[float]:
    sizes = [len(p) for p in prompts]
    total = sum(sizes) or 1
    return [s / total for s in sizes]


def _usage_share(usage: dict[str, Any], prompt: str | list[int], share: float, count: int) -> dict[str, int]:
    prompt_tokens = len(prompt) if isinstance(prompt, list) else round(usage["prompt_tokens"] * share)
    completion = round(usage["completion_tokens"] / count)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
