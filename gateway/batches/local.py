"""The local batch engine: a batch's misses answered through the gateway's own pipeline, a few at a time.

For upstreams with no batch API (vLLM's OpenAI server, any openai-compatible
one): each miss is an ordinary request through the scheduler, single-flight,
record and index, so it is recorded (``served: miss``) and cached exactly as
if a client had sent it, at a concurrency low enough to leave room for the
online traffic sharing the model.
"""

from __future__ import annotations

import asyncio

from gateway.errors import GatewayError
from gateway.pipeline import Answer, Call, Pipeline


async def answer_locally(
    pipeline: Pipeline, calls: list[Call], concurrency: int
) -> dict[str, Answer | GatewayError]:
    """Each call's answer (or its failure), by key, with at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Call) -> Answer | GatewayError:
        async with gate:
            try:
                return await pipeline.answer(call)
            except GatewayError as exc:  # already recorded by the pipeline
                return exc

    answers = await asyncio.gather(*(one(call) for call in calls))
    return {call.key: answer for call, answer in zip(calls, answers, strict=True)}
