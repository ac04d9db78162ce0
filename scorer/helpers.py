"""Python helpers of lm-eval task files: ``!function module.name``, loaded from the task's own folder.

lm-eval's ``utils.load_yaml_config`` imports ``module.py`` beside the YAML
file that holds the tag and takes ``name`` from it. The scorer does the same,
but keeps the reference as data (:func:`function_ref`: the dotted name and
the module's absolute path) so that a task's normalised form still goes into
the JSON manifest, and `scorer score` imports the same file again.

Helpers the scorer runs (:data:`HELPER_KEYS`): ``doc_to_text``,
``doc_to_target``, ``doc_to_choice`` (called with the document),
``process_docs`` (called with a ``datasets.Dataset`` of a split, as lm-eval
calls it, for every split including the few-shot pool) and
``process_results`` (called with the document and the results: per choice
``(loglikelihood, is_greedy)`` for loglikelihood tasks, the filtered answers
for generation). A ``!function`` anywhere else is refused at load.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from scorer.errors import BadInput

FUNCTION = "!function"
HELPER_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice", "process_docs", "process_results")


def function_ref(dotted: str, base_dir: Path) -> dict[str, str]:
    """The stored form of ``!function module.name`` written in a file in ``base_dir``."""
    *module, _name = dotted.split(".")
    return {FUNCTION: dotted, "file": str((base_dir / f"{'.'.join(module)}.py").resolve())}


def is_function(value: Any) -> bool:
    """Whether ``value`` is a stored ``!function`` reference."""
    return isinstance(value, dict) and FUNCTION in value


def describe(value: dict[str, str]) -> str:
    """``!function utils.name`` as the task file wrote it."""
    return f"{FUNCTION} {value[FUNCTION]}"


def load_function(ref: dict[str, str], where: str) -> Callable[..., Any]:
    """The helper ``ref`` names; an unreadable module or a missing name is :class:`BadInput`."""
    try:
        return _load(ref[FUNCTION], ref["file"])
    except BadInput as exc:
        raise BadInput(f"{where} is {describe(ref)}: {exc}") from None


@lru_cache(maxsize=256)
def _load(dotted: str, file: str) -> Callable[..., Any]:
    *module_parts, name = dotted.split(".")
    if not module_parts:
        raise BadInput("expected module.name")
    path = Path(file)
    if not path.is_file():
        raise BadInput(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(".".join(module_parts), path)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a helper module may fail in any way (even exit); say how
        raise BadInput(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise BadInput(f"{path} has no function {name!r}")
    return function  # type: ignore[no-any-return]


def apply_process_docs(
    ref: dict[str, str] | None, docs: list[dict[str, Any]], where: str
) -> list[dict[str, Any]]:
    """``docs`` through the task's ``process_docs`` (as a ``datasets.Dataset``, as lm-eval passes it)."""
    if ref is None:
        return docs
    function = load_function(ref, f"{where}: process_docs")
    import datasets  # only for tasks with a process_docs helper, which expect its Dataset

    try:
        processed = function(datasets.Dataset.from_list(docs))
        return [dict(row) for row in processed]
    except Exception as exc:  # the helper's own failure: one line naming it
        raise BadInput(f"{where}: process_docs {describe(ref)} failed: {type(exc).__name__}: {exc}") from exc
