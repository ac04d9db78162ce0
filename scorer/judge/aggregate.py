"""Verdicts to task numbers: mean rating, win rate with ties, pass rate; unreadable verdicts counted apart.

Each graded item is one (document, turn). Single grading scores it by its
rating; rubric by pass (1) or fail (0); pairwise by both orders together: the
model's answer wins an order (1), ties (0.5) or loses (0), and the item scores
the mean of its two orders, so a judge that always prefers the first position
scores every item 0.5 (AlpacaEval's win rate with ties as half, MT-Bench's
swap). An item with an unreadable verdict is left out of the mean and counted
in ``judge_unparsed`` (verdicts) and ``judge_unscored`` (items); it is never a 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from scorer.judge.config import JudgeConfig
from scorer.judge.parse import TIE, A, B, Verdict
from scorer.judge.prompt import AB, JudgeAsk
from scorer.stderr import mean_stderr

METRIC_OF_KIND = {"single": "judge_rating", "pairwise": "judge_win_rate", "rubric": "judge_pass_rate"}
# which way each count is better: what was scored or unreadable says how the judging went, not the model
COUNT_DIRECTIONS = {
    "judge_wins": True,
    "judge_losses": False,
    "judge_ties": None,
    "judge_scored": None,
    "judge_unscored": None,
    "judge_unparsed": None,
}


@dataclass
class JudgeScores:
    """A task's judge numbers: ``values`` as results report them, and each item's score (None: unscored)."""

    values: dict[str, tuple[float | int, float | str]] = field(default_factory=dict)
    items: dict[tuple[int, int], float | None] = field(default_factory=dict)


def order_score(order: str, value: object) -> float:
    """The model's score in one pairwise order: its side preferred 1, a tie 0.5, the other side 0."""
    if value == TIE:
        return 0.5
    ours = A if order == AB else B
    return 1.0 if value == ours else 0.0


def item_scores(
    judge: JudgeConfig, judged: Iterable[tuple[JudgeAsk, Verdict]]
) -> dict[tuple[int, int], float | None]:
    """Each (document, turn)'s score, None when any of its verdicts is unreadable."""
    by_item: dict[tuple[int, int], list[tuple[JudgeAsk, Verdict]]] = defaultdict(list)
    for ask, verdict in judged:
        by_item[(ask.doc_id, ask.turn)].append((ask, verdict))
    items: dict[tuple[int, int], float | None] = {}
    for item, pairs in sorted(by_item.items()):
        if not all(v.parsed for _, v in pairs):
            items[item] = None
        elif judge.kind == "pairwise":
            items[item] = sum(order_score(a.order, v.value) for a, v in pairs) / len(pairs)
        elif judge.kind == "rubric":
            items[item] = 1.0 if pairs[0][1].value is True else 0.0
        else:
            value = pairs[0][1].value
            assert isinstance(value, float)
            items[item] = value
    return items


def aggregate(judge: JudgeConfig, judged: list[tuple[JudgeAsk, Verdict]]) -> JudgeScores:
    """The task's judge metrics: the kind's mean (per turn too, for conversations) and the counts."""
    items = item_scores(judge, judged)
    scores = JudgeScores(items=items)
    name = METRIC_OF_KIND[judge.kind]
    scored = [s for s in items.values() if s is not None]
    if scored:
        scores.values[name] = (sum(scored) / len(scored), mean_stderr(scored))
    turns = sorted({turn for _, turn in items})
    if len(turns) > 1:
        for turn in turns:
            of_turn = [s for (_, t), s in items.items() if t == turn and s is not None]
            if of_turn:
                scores.values[f"{name}_turn{turn}"] = (sum(of_turn) / len(of_turn), mean_stderr(of_turn))
    if judge.kind == "pairwise":
        # MT-Bench's reading of a swapped pair: a win only if both orders say so, a loss likewise
        scores.values["judge_wins"] = (sum(1 for s in scored if s == 1.0), "N/A")
        scores.values["judge_losses"] = (sum(1 for s in scored if s == 0.0), "N/A")
        scores.values["judge_ties"] = (sum(1 for s in scored if 0.0 < s < 1.0), "N/A")
    scores.values["judge_scored"] = (len(scored), "N/A")
    scores.values["judge_unscored"] = (len(items) - len(scored), "N/A")
    scores.values["judge_unparsed"] = (sum(1 for _, v in judged if not v.parsed), "N/A")
    return scores


def judge_directions(metrics: Iterable[str]) -> dict[str, bool | None]:
    """``higher_is_better`` of the judge numbers among ``metrics`` (None: a count with no direction)."""
    directions: dict[str, bool | None] = {}
    for metric in metrics:
        if metric in COUNT_DIRECTIONS:
            directions[metric] = COUNT_DIRECTIONS[metric]
        elif metric.split("_turn")[0] in METRIC_OF_KIND.values():
            directions[metric] = True
    return directions
