"""A task's two rounds as plans: for each document, its prompt and the requests that answer it.

Built in two steps: prompts first (:class:`DocPrompt`, what each document
asks, as text), then plans (:class:`DocPlan`, the requests, once the texts are
tokenized), so a round's texts are known, and tokenized in bulk, before any
request is built. The train round asks the model for its own answers on the train documents
that serve as few-shot examples (only for tasks with ``fewshot.targets:
model``); the eval round asks what the task evaluates. Plans are pure
functions of the task, the documents (with their drawn few-shot examples), the tokenizer and (for the
eval round) the train answers, which is what lets ``scorer score`` rebuild
exactly the requests ``scorer run`` sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from scorer.prompts import context, doc_to_choice, doc_to_target, doc_to_text, example, target_text
from scorer.requests import Ask, Request, RequestBuilder
from scorer.tasks import TaskConfig


class DocPlan(NamedTuple):
    """One document of a round: what is asked, what is expected, which requests answer it."""

    doc_id: int
    doc: dict[str, Any]
    prompt: str
    target: Any
    choices: list[str] | None
    requests: tuple[Request, ...]


@dataclass(frozen=True)
class Documents:
    """The documents a task's rounds draw on: evaluated ones, the few-shot pool, and who shows which.

    ``shots[doc_id]`` are the pool indices of that document's examples, drawn
    once when the run is made (:func:`scorer.prompts.draw_shots`) and stored
    with it, so a re-score shows exactly the examples the run showed.
    """

    eval: dict[int, dict[str, Any]]
    train: dict[int, dict[str, Any]]  # only the ones used as few-shot examples
    train_pool_size: int
    shots: dict[int, list[int]] = field(default_factory=dict)


def shots_for(docs: Documents, doc_id: int) -> list[int]:
    """Indices of the few-shot documents shown before evaluated document ``doc_id``."""
    return docs.shots.get(doc_id, [])


class DocPrompt(NamedTuple):
    """One document of a round before tokenization: its prompt, and what it asks of the model."""

    doc_id: int
    doc: dict[str, Any]
    prompt: str
    target: Any
    choices: list[str] | None
    asks: tuple[Ask, ...]


def train_prompts(task: TaskConfig, docs: Documents) -> list[DocPrompt]:
    """Zero-shot generations on the train documents whose answers become few-shot targets."""
    if not task.fewshot_from_model:
        return []
    prompts = []
    for i in sorted(docs.train):
        doc = docs.train[i]
        prompt = doc_to_text(task, doc)
        prompts.append(DocPrompt(i, doc, prompt, doc_to_target(task, doc), None, (Ask("generate", prompt),)))
    return prompts


def eval_prompts(
    task: TaskConfig,
    docs: Documents,
    train_answers: dict[int, str] | None = None,
    doc_ids: Iterable[int] | None = None,
) -> list[DocPrompt]:
    """The evaluated documents (all, or ``doc_ids``) as prompts; ``train_answers`` supply few-shot targets."""
    prompts = []
    output_type = task.output_type
    fewshot = task.num_fewshot > 0
    examples: dict[int, str] = {}  # each few-shot document is rendered once, however often shown
    for doc_id in sorted(docs.eval) if doc_ids is None else doc_ids:
        doc = docs.eval[doc_id]
        shown = []
        for i in shots_for(docs, doc_id) if fewshot else ():
            text = examples.get(i)
            if text is None:
                shot = docs.train[i]
                answer = train_answers[i] if train_answers is not None else target_text(task, shot)
                text = examples[i] = example(task, shot, answer)
            shown.append(text)
        prompt = context(task, doc, shown)
        target = doc_to_target(task, doc)
        choices = None
        if output_type == "generate_until":
            if isinstance(target, int) and task.raw["doc_to_choice"] is not None:
                target = doc_to_choice(task, doc)[target]  # as lm-eval: the choice is the gold answer
            asks: tuple[Ask, ...] = (Ask("generate", prompt),)
        elif output_type == "multiple_choice":
            choices = doc_to_choice(task, doc)
            delimiter = task.raw["target_delimiter"]
            asks = tuple(Ask("loglikelihood", prompt, delimiter + c) for c in choices)
        elif output_type == "loglikelihood":
            asks = (Ask("loglikelihood", prompt, str(target)),)
        else:  # loglikelihood_rolling: lm-eval scores the target text on its own
            asks = (Ask("rolling", str(target)),)
        prompts.append(DocPrompt(doc_id, doc, prompt, target, choices, asks))
    return prompts


def texts_of(prompts: Iterable[DocPrompt], builder: RequestBuilder) -> list[str]:
    """Every distinct text the requests of ``prompts`` tokenize, in first-use order."""
    texts: dict[str, None] = {}
    for prompt in prompts:
        for ask in prompt.asks:
            for text in builder.texts(ask):
                texts[text] = None
    return list(texts)


def plans_of(prompts: Iterable[DocPrompt], builder: RequestBuilder) -> list[DocPlan]:
    """``prompts`` with their requests built (``builder``'s tokenizer must know every text)."""
    return [
        DocPlan(
            p.doc_id,
            p.doc,
            p.prompt,
            p.target,
            p.choices,
            tuple(r for ask in p.asks for r in builder.requests(ask)),
        )
        for p in prompts
    ]
