"""The judge's requests: its prompt rendered per answer (per order, for pairwise), as a greedy chat call.

A judge request is a pure function of the task's judge config, the document,
the model's answers and the judge model's cache namespace, so ``scorer score``
rebuilds exactly the keys ``scorer run`` sent.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from cache.keys import request_key
from scorer.judge.config import JudgeConfig
from scorer.requests import CHAT, Request
from scorer.templates import render

AB, BA = "ab", "ba"  # pairwise: the model's answer shown first (as A), or second (as B)


class JudgeAsk(NamedTuple):
    """One judge call: which document and turn it grades, in which order, and its request."""

    doc_id: int
    turn: int  # 1-based
    order: str  # "" (single, rubric), AB or BA (pairwise)
    request: Request


def judge_request(judge: JudgeConfig, namespace: str, seed: int, messages: list[dict[str, str]]) -> Request:
    """A greedy chat request to the judge (temperature 0: one answer per prompt, cached as such)."""
    body: dict[str, Any] = {
        "model": judge.model,
        "messages": messages,
        "max_tokens": judge.max_tokens,
        "temperature": 0,
        "seed": seed,
    }
    return Request(request_key(CHAT, namespace, body), CHAT, body)


def judge_context(
    doc: dict[str, Any],
    questions: list[str],
    answers: list[str],
    turn: int,
    reference: Any,
) -> dict[str, Any]:
    """What a judge template sees of turn ``turn`` (1-based): the document's fields, then ours."""
    return {
        **doc,
        "doc": doc,
        "question": questions[turn - 1],
        "answer": answers[turn - 1],
        "reference": reference,
        "turn": turn,
        "turns": questions[:turn],
        "answers": answers[:turn],
    }


def judge_asks(
    judge: JudgeConfig,
    namespace: str,
    seed: int,
    doc_id: int,
    context: dict[str, Any],
    where: str,
) -> list[JudgeAsk]:
    """The judge calls grading one answer: one, or two for pairwise (both orders, to cancel position bias)."""
    turn = int(context["turn"])
    orders = [AB, BA] if judge.kind == "pairwise" else [""]
    asks = []
    for order in orders:
        seen = dict(context)
        if order:
            ours, theirs = context["answer"], context["reference"]
            seen["answer_a"], seen["answer_b"] = (ours, theirs) if order == AB else (theirs, ours)
        messages = []
        if judge.system is not None:
            messages.append(
                {"role": "system", "content": render(judge.system, seen, f"{where}: judge.system")}
            )
        messages.append({"role": "user", "content": render(judge.prompt, seen, f"{where}: judge.prompt")})
        asks.append(JudgeAsk(doc_id, turn, order, judge_request(judge, namespace, seed, messages)))
    return asks
