"""A task's two rounds as plans: for each document, its prompt and the requests that answer it.

The train round asks the model for its own answers on the train documents
that serve as few-shot examples (only for tasks with ``fewshot.targets:
model``); the eval round asks what the task evaluates. Plans are pure
functions of the task, the documents, the seed, the tokenizer and (for the
eval round) the train answers, which is what lets ``scorer score`` rebuild
exactly the requests ``scorer run`` sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from scorer.prompts import context, doc_to_choice, doc_to_target, doc_to_text, fewshot_indices, target_text
from scorer.requests import Request, RequestBuilder
from scorer.tasks import TaskConfig
from scorer.tokenizer import RecordingTokenizer, TableTokenizer, Tokenizer

T = TypeVar("T")


@dataclass(frozen=True)
class DocPlan:
    """One document of a round: what is asked, what is expected, which requests answer it."""

    doc_id: int
    doc: dict[str, Any]
    prompt: str
    target: Any
    choices: list[str] | None
    requests: tuple[Request, ...]


@dataclass(frozen=True)
class Documents:
    """The documents a task's rounds draw on: evaluated ones, and the train pool."""

    eval: dict[int, dict[str, Any]]
    train: dict[int, dict[str, Any]]  # only the ones used as few-shot examples
    train_pool_size: int
    same_split: bool


def shots_for(task: TaskConfig, docs: Documents, doc_id: int, seed: int) -> list[int]:
    """Indices of the train documents shown before evaluated document ``doc_id``."""
    return fewshot_indices(task, doc_id, docs.train_pool_size, seed, docs.same_split)


def needed_train(
    task: TaskConfig, eval_ids: list[int], pool_size: int, seed: int, same_split: bool
) -> set[int]:
    """Every train index some evaluated document uses as an example."""
    return {i for d in eval_ids for i in fewshot_indices(task, d, pool_size, seed, same_split)}


def train_plan(task: TaskConfig, docs: Documents, builder: RequestBuilder) -> list[DocPlan]:
    """Zero-shot generation requests for the train documents whose answers become few-shot targets."""
    if not task.fewshot_from_model:
        return []
    plans = []
    for i in sorted(docs.train):
        doc = docs.train[i]
        prompt = doc_to_text(task, doc)
        plans.append(DocPlan(i, doc, prompt, doc_to_target(task, doc), None, (builder.generate(prompt),)))
    return plans


def eval_plan(
    task: TaskConfig,
    docs: Documents,
    builder: RequestBuilder,
    seed: int,
    train_answers: dict[int, str] | None = None,
) -> list[DocPlan]:
    """The evaluated documents' requests; ``train_answers`` supply few-shot targets when the task asks."""
    plans = []
    for doc_id in sorted(docs.eval):
        doc = docs.eval[doc_id]
        shots = []
        for i in shots_for(task, docs, doc_id, seed):
            example = docs.train[i]
            answer = train_answers[i] if train_answers is not None else target_text(task, example)
            shots.append((doc_to_text(task, example), answer))
        prompt = context(task, doc, shots)
        target = doc_to_target(task, doc)
        choices = None
        output_type = task.output_type
        if output_type == "generate_until":
            if isinstance(target, int) and task.raw["doc_to_choice"] is not None:
                target = doc_to_choice(task, doc)[target]  # as lm-eval: the choice is the gold answer
            requests: tuple[Request, ...] = (builder.generate(prompt),)
        elif output_type == "multiple_choice":
            choices = doc_to_choice(task, doc)
            delimiter = task.raw["target_delimiter"]
            requests = tuple(builder.loglikelihood(prompt, delimiter + c) for c in choices)
        elif output_type == "loglikelihood":
            requests = (builder.loglikelihood(prompt, str(target)),)
        else:  # parse_task refuses loglikelihood_rolling until rolling windows are built
            raise NotImplementedError("loglikelihood_rolling")
        plans.append(DocPlan(doc_id, doc, prompt, target, choices, requests))
    return plans


def texts_needed(build: Callable[[Tokenizer], object]) -> list[str]:
    """The texts ``build`` tokenizes, found by a dry run with a recording tokenizer."""
    recorder = RecordingTokenizer()
    build(recorder)
    return list(recorder.texts)


def with_table(build: Callable[[Tokenizer], T], table: dict[str, list[int]]) -> T:
    """``build`` run with token ids looked up in ``table``."""
    return build(TableTokenizer(table))
