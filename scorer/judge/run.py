"""``scorer run``'s side of a judged task: later conversation turns, then the judge, through the gateway.

Judge calls go to the run's own root like every request, labelled
``X-Task: <task>/judge`` so the gateway's records and reports keep the judge
round apart from generation (labelled ``<task>``); they are greedy, so a
second run, a ``--judge-only`` with the same prompt, or ``scorer score`` finds
each verdict in the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from scorer.errors import BadInput
from scorer.judge.config import judge_label, judge_of
from scorer.judge.round import JudgeSettings, add_turn, first_answers, judge_plan
from scorer.judge.turns import n_turns, turn_requests
from scorer.requests import Request
from scorer.rounds import DocPlan
from scorer.tasks import TaskConfig, parse_task


class Sender(Protocol):
    """What the judge round needs of a client: send requests under a label, get responses by key."""

    async def send(
        self, requests: Iterable[Request], desc: str, label: str | None = None
    ) -> dict[str, dict[str, Any]]: ...


def with_judge(task: TaskConfig, model: str | None, against_run: str | None = None) -> TaskConfig:
    """``task`` judged by ``model`` (``--judge-model``) and against ``against_run`` (``--judge-against``).

    Either flag names a judged task's judge; a task without one is refused when a flag is given.
    """
    changes = {k: v for k, v in (("model", model), ("against_run", against_run)) if v is not None}
    if not changes:
        return task
    judge = task.raw.get("judge")
    if not judge:
        flags = " and ".join(f"--judge-{'model' if k == 'model' else 'against'}" for k in changes)
        raise BadInput(f"{flags}: task {task.name} has no judge: section")
    return parse_task(
        {**task.raw, "judge": {**judge, **changes}}, f"task {task.name} with its --judge-* flags"
    )


async def send_turns(
    client: Sender,
    task: TaskConfig,
    namespace: str,
    plans: list[DocPlan],
    responses: Mapping[str, Any],
    sent: dict[str, int],
) -> dict[int, list[str]]:
    """Each document's answers turn by turn: turn 1 from ``responses``, later turns sent in order."""
    answers = first_answers(plans, responses)
    for turn in range(2, n_turns(task, plans) + 1):
        requests = turn_requests(task, namespace, plans, answers, turn)
        found = await client.send(requests.values(), f"{task.name} turn {turn}", label=task.name)
        sent[f"{task.name}/turn{turn}"] = len(found)
        add_turn(answers, requests, found)
    return answers


async def send_judge(
    client: Sender,
    task: TaskConfig,
    settings: JudgeSettings,
    plans: list[DocPlan],
    answers: Mapping[int, list[str]],
    sent: dict[str, int],
) -> None:
    """Every judge call of the round, once each, labelled as the judge round."""
    asks = judge_plan(task, settings, plans, answers)
    label = judge_label(task.name)
    found = await client.send((a.request for a in asks), label, label=label)
    sent[label] = len(found)


def judge_model_of(task: TaskConfig) -> str | None:
    """The model that judges ``task`` (None: not judged)."""
    judge = judge_of(task.raw)
    return judge.model if judge else None
