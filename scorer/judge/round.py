"""The judge round's plan, shared by ``scorer run`` and ``scorer score``: answers in, judge asks out.

Pure functions of the task, its eval plans, the model's answers and the judge
settings; where responses come from (the gateway, or the cache) is the caller's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from scorer.judge.aggregate import JudgeScores
from scorer.judge.config import JudgeConfig
from scorer.judge.parse import Verdict, parse_verdict
from scorer.judge.prompt import JudgeAsk, judge_asks, judge_context
from scorer.judge.turns import user_turns
from scorer.requests import Request
from scorer.responses import generations
from scorer.rounds import DocPlan
from scorer.tasks import TaskConfig
from scorer.templates import render


@dataclass(frozen=True)
class JudgeSettings:
    """What a run fixes about its judge: the config (with ``--judge-model`` applied), its namespace, seed.

    ``baseline`` holds another run's answers per document, turn by turn, when a
    pairwise judge compares against that run (``judge.against_run``) instead of the reference.
    """

    judge: JudgeConfig
    namespace: str
    seed: int
    baseline: Mapping[int, list[str]] | None = None


def answer_text(response: Mapping[str, Any]) -> str:
    """The model's answer in a response: its first choice, stripped (what the judge and turn 2 see)."""
    texts = generations(dict(response))
    return texts[0].strip() if texts else ""


def first_answers(plans: list[DocPlan], responses: Mapping[str, Any]) -> dict[int, list[str]]:
    """Each document's turn-1 answer, as a one-item list that later turns extend."""
    return {p.doc_id: [answer_text(responses[p.requests[0].key])] for p in plans}


def add_turn(
    answers: dict[int, list[str]], requests: Mapping[int, Request], responses: Mapping[str, Any]
) -> None:
    """Append each document's answer to its turn request."""
    for doc_id, request in requests.items():
        answers[doc_id].append(answer_text(responses[request.key]))


def _turn_of(per_turn: list[Any], turn: int) -> Any:
    """Turn ``turn``'s item (1-based) of a per-turn list; "" past its end."""
    return per_turn[turn - 1] if turn <= len(per_turn) else ""


def reference_of(task: TaskConfig, judge: JudgeConfig, plan: DocPlan, turn: int) -> Any:
    """The reference answer for a turn: ``judge.reference`` rendered, else the target; a list is per turn."""
    reference = (
        render(judge.reference, plan.doc, f"task {task.name}: judge.reference")
        if judge.reference
        else plan.target
    )
    if isinstance(reference, list):
        return _turn_of(reference, turn)
    return reference


def judge_plan(
    task: TaskConfig, settings: JudgeSettings, plans: list[DocPlan], answers: Mapping[int, list[str]]
) -> list[JudgeAsk]:
    """Every judge call of the round: per document, per answered turn, per order (pairwise)."""
    asks = []
    where = f"task {task.name}"
    for plan in plans:
        questions = user_turns(task, plan)
        given = answers[plan.doc_id]
        for turn in range(1, len(given) + 1):
            reference = (
                _turn_of(settings.baseline[plan.doc_id], turn)
                if settings.baseline is not None
                else reference_of(task, settings.judge, plan, turn)
            )
            context = judge_context(plan.doc, questions, given, turn, reference)
            asks += judge_asks(settings.judge, settings.namespace, settings.seed, plan.doc_id, context, where)
    return asks


def verdicts(
    judge: JudgeConfig, asks: list[JudgeAsk], responses: Mapping[str, Any]
) -> list[tuple[JudgeAsk, Verdict]]:
    """Each ask with its judge answer read (``responses`` must hold every ask's key)."""
    return [(a, parse_verdict(judge, answer_text(responses[a.request.key]))) for a in asks]


def judgment_rows(judged: Iterable[tuple[JudgeAsk, Verdict]], scores: JudgeScores) -> list[bytes]:
    """One JSON line per judge call: what was asked, what the judge said, what was read from it."""
    rows = []
    for ask, verdict in judged:
        row = {
            "doc_id": ask.doc_id,
            "turn": ask.turn,
            "order": ask.order or None,
            "messages": ask.request.body["messages"],
            "judgment": verdict.text,
            "verdict": verdict.value,
            "parsed": verdict.parsed,
            "item_score": scores.items.get((ask.doc_id, ask.turn)),
            "key": ask.request.key,
        }
        rows.append(orjson.dumps(row) + b"\n")
    return rows
