"""Conversations: each later user turn is asked after the model's own earlier answers (MT-Bench style).

Turn 1 is the task's eval round as it is (its prompt from ``doc_to_text``);
turn ``k`` repeats that request with the conversation so far in ``messages``,
so its key follows from the earlier answers and ``scorer score`` can rebuild it.
"""

from __future__ import annotations

from typing import Any

from cache.keys import is_sampled, request_key, sample_key
from scorer.requests import CHAT, Request
from scorer.rounds import DocPlan
from scorer.tasks import TaskConfig


def user_turns(task: TaskConfig, plan: DocPlan) -> list[str]:
    """The user turns of ``plan``'s document: its prompt, then the later turns of ``turns:`` (if any)."""
    field = task.raw.get("turns")
    later = list(plan.doc.get(field) or [])[1:] if field else []
    return [plan.prompt, *(str(t) for t in later)]


def n_turns(task: TaskConfig, plans: list[DocPlan]) -> int:
    """The longest conversation among ``plans``."""
    return max((len(user_turns(task, p)) for p in plans), default=1)


def followup_request(namespace: str, first: Request, questions: list[str], answers: list[str]) -> Request:
    """Turn ``len(answers) + 1``: ``first`` (turn 1's request) with the conversation so far."""
    messages: list[dict[str, Any]] = []
    for question, answer in zip(questions, answers, strict=False):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": questions[len(answers)]})
    body = {**first.body, "messages": messages}
    key = request_key(CHAT, namespace, body)
    return Request(sample_key(key, 0) if is_sampled(CHAT, body) else key, CHAT, body)


def turn_requests(
    task: TaskConfig, namespace: str, plans: list[DocPlan], answers: dict[int, list[str]], turn: int
) -> dict[int, Request]:
    """Turn ``turn``'s request (2-based onwards) of each document whose conversation has that turn."""
    requests = {}
    for plan in plans:
        questions = user_turns(task, plan)
        if len(questions) >= turn:
            requests[plan.doc_id] = followup_request(
                namespace, plan.requests[0], questions, answers[plan.doc_id][: turn - 1]
            )
    return requests
