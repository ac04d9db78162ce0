"""From a document to its prompt: fields as lm-evaluation-harness resolves them, and few-shot contexts.

Few-shot examples are drawn as lm-eval's samplers (``lm_eval/api/samplers.py``)
draw them: one generator per task, seeded once, shared by the evaluated
documents in document order; so document ``i``'s examples are lm-eval's for
the same seed, and do not depend on ``--limit`` (earlier documents draw first).
The prompt is lm-eval's ``fewshot_context``: the description as it is (no
delimiter added), each example as question, target delimiter, answer,
few-shot delimiter, then the question.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from scorer.errors import BadInput
from scorer.helpers import is_function, load_function
from scorer.tasks import TaskConfig
from scorer.templates import missing_field, render, simple_template


def _field(task: TaskConfig, field: str, doc: dict[str, Any]) -> Any:
    source = task.raw[field]
    if type(source) is str:
        return _resolver(source, task.name, field)(doc)
    if isinstance(source, int | list):
        return source
    if is_function(source):  # a Python helper beside the task file, called as lm-eval calls it
        return load_function(source, f"task {task.name}: {field}")(doc)
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


def draw_shots(
    task: TaskConfig, eval_docs: list[dict[str, Any]], pool: list[dict[str, Any]], seed: int
) -> list[list[int]]:
    """For each of ``eval_docs`` in order, the indices into ``pool`` of its few-shot examples.

    ``default``: lm-eval's ``ContextSampler`` with ``Random(seed)``: ``k``
    draws, or ``k + 1`` when the evaluated document is to be left out (then
    every drawn copy of it is dropped and the rest cut to ``k``; if that leaves
    too few, ``k`` are drawn again from the pool without it). ``first_n``: the
    first ``k`` of the pool (without the evaluated document). Indices stand for
    documents: ``random.sample`` picks positions, whatever the items are.
    """
    k = task.num_fewshot
    if k == 0:
        return [[] for _ in eval_docs]
    fewshot = task.raw["fewshot"]
    exclude = bool(fewshot["exclude_eval_doc"])
    size = len(pool)
    where = f"task {task.name}"
    if fewshot["sampler"] == "first_n":
        shots = []
        for doc in eval_docs:
            kept = [i for i in range(size) if not (exclude and pool[i] == doc)]
            if k > len(kept):
                raise BadInput(f"{where}: {k} few-shot examples asked, the few-shot pool has {len(kept)}")
            shots.append(kept[:k])
        return shots
    if k + exclude > size:
        raise BadInput(f"{where}: {k} few-shot examples asked, the few-shot pool has {size}")
    rnd = random.Random(seed)
    shots = []
    for doc in eval_docs:
        if not (exclude and doc):
            shots.append(rnd.sample(range(size), k))
            continue
        picked = [i for i in rnd.sample(range(size), k + 1) if pool[i] != doc][:k]
        if len(picked) < k:
            picked = rnd.sample([i for i in range(size) if pool[i] != doc], k)
        shots.append(picked)
    return shots


def example(task: TaskConfig, doc: dict[str, Any], answer: str) -> str:
    """One few-shot example as lm-eval's ``build_qa_turn`` renders it (an empty answer shows no answer)."""
    question = doc_to_text(task, doc)
    if answer == "":
        return question
    fewshot = task.raw["fewshot"]
    return question + fewshot["target_delimiter"] + answer + fewshot["fewshot_delimiter"]


def context(task: TaskConfig, doc: dict[str, Any], examples: list[str]) -> str:
    """The full prompt text: the description, the rendered few-shot ``examples``, then the question."""
    description = task.raw["description"]
    if description:
        description = (
            str(doc[description])
            if description in doc
            else render(description, doc, f"task {task.name}: description")
        )
    return description + "".join(examples) + doc_to_text(task, doc)
