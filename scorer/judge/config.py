"""The ``judge:`` and ``turns:`` sections of a task file, validated once, kept in the task's raw form.

``judge:`` fields::

    model: NAME          # a model the gateway serves (``scorer run --judge-model`` replaces it)
    kind: single | pairwise | rubric
    prompt: TEMPLATE     # Jinja over the document's fields and doc, question, answer, reference,
                         # turn, turns, answers; pairwise also answer_a, answer_b (both orders asked)
    system: TEXT         # optional system message (a template too)
    reference: TEMPLATE  # the reference answer (default: the task's doc_to_target)
    scale: [1, 10]       # single: the ratings accepted
    pattern: REGEX       # how to find the verdict (defaults: MT-Bench's [[rating]], [[A]]/[[B]]/[[C]],
                         # [[PASS]]/[[FAIL]]); its first group is the verdict
    max_tokens: 512      # the judge's answer budget; the judge is greedy (temperature 0)
    against_run: RUN_ID  # pairwise: judge against this run's answers (same cache dir, task and
                         # documents) instead of the reference; `scorer run --judge-against` sets it

``turns: FIELD`` names the document field holding a conversation's user
turns (MT-Bench's ``turns``); the first is asked by ``doc_to_text``, each
later one after the model's own earlier answers; the judge is asked once per turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from scorer.errors import BadInput
from scorer.templates import check_template

KINDS = ("single", "pairwise", "rubric")
DEFAULT_PATTERNS = {
    "single": r"\[\[(\d+(?:\.\d+)?)\]\]",
    "pairwise": r"\[\[([ABC])\]\]",
    "rubric": r"\[\[(PASS|FAIL)\]\]",
}
DEFAULT_MAX_TOKENS = 512
JUDGE_LABEL_SUFFIX = "/judge"
_FIELDS = {"model", "kind", "prompt", "system", "reference", "scale", "pattern", "max_tokens", "against_run"}


@dataclass(frozen=True)
class JudgeConfig:
    """A task's judge, as validated: see the module docstring for each field."""

    model: str
    kind: str
    prompt: str
    system: str | None
    reference: str | None
    scale: tuple[float, float]
    pattern: str
    max_tokens: int
    against_run: str | None = None

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> JudgeConfig:
        """The config of a normalised ``judge:`` mapping (as :func:`parse_judge` returns it)."""
        low, high = raw["scale"]
        return cls(
            raw["model"],
            raw["kind"],
            raw["prompt"],
            raw["system"],
            raw["reference"],
            (float(low), float(high)),
            raw["pattern"],
            int(raw["max_tokens"]),
            raw.get("against_run"),
        )


def judge_label(task: str) -> str:
    """The ``X-Task`` label of a task's judge calls, so reports show the judge round apart."""
    return task + JUDGE_LABEL_SUFFIX


def parse_judge(value: Any, at: str) -> dict[str, Any] | None:
    """The normalised ``judge:`` mapping (None when absent); each problem one :class:`BadInput` line."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadInput(f"{at}: judge must be a mapping (model, kind, prompt, …)")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise BadInput(f"{at}: unknown judge field(s) {', '.join(unknown)}")
    for required in ("model", "prompt"):
        if not value.get(required) or not isinstance(value[required], str):
            raise BadInput(f"{at}: judge.{required} is required (a string)")
    kind = value.get("kind", "single")
    if kind not in KINDS:
        raise BadInput(f"{at}: judge.kind {kind!r} is not one of {', '.join(KINDS)}")
    scale = value.get("scale", [1, 10])
    if (
        not isinstance(scale, list)
        or len(scale) != 2
        or not all(isinstance(s, int | float) for s in scale)
        or scale[0] >= scale[1]
    ):
        raise BadInput(f"{at}: judge.scale must be [low, high] with low < high")
    pattern = value.get("pattern") or DEFAULT_PATTERNS[kind]
    try:
        if re.compile(pattern).groups < 1:
            raise BadInput(f"{at}: judge.pattern {pattern!r} needs a group that captures the verdict")
    except re.error as exc:
        raise BadInput(f"{at}: judge.pattern {pattern!r} does not compile: {exc}") from exc
    max_tokens = value.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadInput(f"{at}: judge.max_tokens must be a positive integer")
    against = value.get("against_run")
    if against is not None and (kind != "pairwise" or not isinstance(against, str) or not against):
        raise BadInput(f"{at}: judge.against_run (a run id) needs kind: pairwise")
    for field in ("prompt", "system", "reference"):
        if value.get(field) is not None:
            if not isinstance(value[field], str):
                raise BadInput(f"{at}: judge.{field} must be a string template")
            check_template(value[field], f"{at}: judge.{field}")
    normalised = {
        "model": value["model"],
        "kind": kind,
        "prompt": value["prompt"],
        "system": value.get("system"),
        "reference": value.get("reference"),
        "scale": list(scale),
        "pattern": pattern,
        "max_tokens": max_tokens,
    }
    if against is not None:  # only when set: judged tasks' raw form (and older manifests) stay equal
        normalised["against_run"] = against
    return normalised


def parse_turns(value: Any, raw: dict[str, Any], at: str) -> str | None:
    """The document field of a conversation's user turns (None: one turn); needs ``api: chat``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadInput(f"{at}: turns must name the document field that lists the user turns")
    if raw["api"] != "chat" or raw["output_type"] != "generate_until":
        raise BadInput(f"{at}: turns needs api: chat and output_type: generate_until")
    return value


def judge_fields(data: dict[str, Any], raw: dict[str, Any], at: str) -> dict[str, Any]:
    """The ``judge`` and ``turns`` entries a task's raw form gains, only those it declares.

    Tasks without them keep the raw form they had, so older manifests and results compare equal.
    """
    judge = parse_judge(data.get("judge"), at)
    if judge is not None and raw["output_type"] != "generate_until":
        raise BadInput(f"{at}: judge needs output_type generate_until (it grades generated answers)")
    turns = parse_turns(data.get("turns"), raw, at)
    return {k: v for k, v in (("judge", judge), ("turns", turns)) if v is not None}


def judge_of(raw: dict[str, Any]) -> JudgeConfig | None:
    """The judge of a task's raw form, or None."""
    judge = raw.get("judge")
    return JudgeConfig.from_raw(judge) if judge else None
