"""Reading answers out of response bodies, as lm-evaluation-harness reads them."""

from __future__ import annotations

from operator import itemgetter
from typing import Any


def generations(response: dict[str, Any]) -> list[str]:
    """Each choice's text (completions) or message content (chat), in ``index`` order."""
    texts = []
    for choice in sorted(response.get("choices") or [], key=itemgetter("index")):
        if "message" in choice:
            content = (choice.get("message") or {}).get("content")
        else:
            content = choice.get("text")
        texts.append(content if isinstance(content, str) else "")
    return texts


def loglikelihood(response: dict[str, Any], ctxlen: int) -> tuple[float, bool]:
    """Summed logprob of the continuation tokens, and whether each was the top choice.

    The response echoes one logprob per prompt token plus one generated token,
    so the continuation is ``[ctxlen:-1]``.
    """
    choice = sorted(response["choices"], key=itemgetter("index"))[0]
    logprobs = choice["logprobs"]
    tokens = logprobs["token_logprobs"][ctxlen:-1]
    tops = logprobs["top_logprobs"][ctxlen:-1]
    greedy = all(token == max(top.values()) for token, top in zip(tokens, tops, strict=False))
    return float(sum(tokens)), greedy
