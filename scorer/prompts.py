"""From a document to its prompt: fields as lm-evaluation-harness resolves them, and few-shot contexts.

Few-shot examples are drawn per evaluated document with a generator seeded by
(seed, task, document index): the same run settings always give the same
prompts, however many documents are evaluated (``--limit``) and in whatever
order.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from scorer.errors import BadInput
from scorer.tasks import TaskConfig
from scorer.templates import missing_field, render, simple_template


def _field(task: TaskConfig, field: str, doc: dict[str, Any]) -> Any:
    source = task.raw[field]
    if type(source) is str:
        return _resolver(source, task.name, field)(doc)
    if isinstance(source, int | list):
        return source
    if isinstance(source, dict):
        return list(source.values())
    if source in doc:
        return doc[source]
    return render(source, doc, f"task {task.name}: {field}")


@lru_cache(maxsize=512)
def _resolver(source: str, task_name: str, field: str) -> Callable[[dict[str, Any]], Any]:
    """A field's value for a document: the document's own field named ``source``, else the template.

    Made once per task and field: ``scorer score`` resolves two or three
    fields for every document, and most templates are one ``{{field}}`` between literals.
    """
    where = f"task {task_name}: {field}"
    simple = simple_template(source)
    if simple is None or len(simple[1]) != 1:
        return lambda doc: doc[source] if source in doc else render(source, doc, where)
    (before, after), (name,) = simple

    def resolve(doc: dict[str, Any]) -> Any:
        if source in doc:
            return doc[source]
        try:
            value = doc[name]
        except KeyError:
            raise missing_field(name, where) from None
        return before + (value if type(value) is str else str(value)) + after

    return resolve


def doc_to_text(task: TaskConfig, doc: dict[str, Any]) -> str:
    """The question part of the prompt."""
    text = _field(task, "doc_to_text", doc)
    return str(text)


def doc_to_choice(task: TaskConfig, doc: dict[str, Any]) -> list[str]:
    """The answer choices (multiple_choice), as a list of strings."""
    choices = _field(task, "doc_to_choice", doc)
    if isinstance(choices, str):
        try:
            choices = ast.literal_eval(choices)
        except (SyntaxError, ValueError) as exc:
            raise BadInput(f"task {task.name}: doc_to_choice did not give a list: {choices[:80]!r}") from exc
    if not isinstance(choices, list):
        raise BadInput(f"task {task.name}: doc_to_choice did not give a list")
    return [str(c) for c in choices]


def doc_to_target(task: TaskConfig, doc: dict[str, Any]) -> Any:
    """The gold answer: a string, a choice index, or a list (as lm-eval's literal rules decide)."""
    target = _field(task, "doc_to_target", doc)
    source = task.raw["doc_to_target"]
    if not isinstance(target, str) or (isinstance(source, str) and source in doc):
        return target
    if target.isdigit() and task.raw["doc_to_choice"] is not None:
        return int(target)
    if len(target) >= 2 and target[0] == "[" and target[-1] == "]":
        try:
            return ast.literal_eval(target)
        except (SyntaxError, ValueError):
            return target
    return target


def target_text(task: TaskConfig, doc: dict[str, Any]) -> str:
    """The gold answer as text, as a few-shot example shows it."""
    target = doc_to_target(task, doc)
    if isinstance(target, list):
        target = target[0]
    if isinstance(target, int) and task.raw["doc_to_choice"] is not None:
        return doc_to_choice(task, doc)[target]
    return str(target)


def fewshot_indices(
    task: TaskConfig, doc_index: int, pool_size: int, seed: int, same_split: bool
) -> list[int]:
    """Which train documents precede evaluated document ``doc_index`` (reproducible)."""
    k = task.num_fewshot
    if k == 0:
        return []
    candidates = [i for i in range(pool_size) if not (same_split and i == doc_index)]
    if k > len(candidates):
        raise BadInput(
            f"task {task.name}: {k} few-shot examples asked, the train split has {len(candidates)}"
        )
    return random.Random(f"{seed}/{task.name}/{doc_index}").sample(candidates, k)


def context(task: TaskConfig, doc: dict[str, Any], shots: list[tuple[str, str]]) -> str:
    """The full prompt text: description, few-shot (question, answer) pairs, then the question."""
    target_delimiter = task.raw["target_delimiter"]
    fewshot_delimiter = task.raw["fewshot_delimiter"]
    description = task.raw["description"]
    if description:
        description = render(description, doc, f"task {task.name}: description") + fewshot_delimiter
    examples = "".join(q + target_delimiter + a + fewshot_delimiter for q, a in shots)
    return description + examples + doc_to_text(task, doc)
