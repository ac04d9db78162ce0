"""Filter chains: what turns a model's raw responses into the answers metrics see.

A filter takes one document's responses (a list of strings, one per sample)
and returns a list again. Chains are named, as in lm-evaluation-harness's
``filter_list``, and results are reported per ``metric,filter``. Every filter
is built (and every regex compiled) when its task is loaded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scorer.errors import BadInput

Filter = Callable[[list[str]], list[str]]
FilterFactory = Callable[..., Filter]

_FILTERS: dict[str, FilterFactory] = {}


def register_filter(name: str) -> Callable[[FilterFactory], FilterFactory]:
    """Register a filter factory under ``name`` (its keyword arguments are the YAML options)."""

    def add(factory: FilterFactory) -> FilterFactory:
        _FILTERS[name] = factory
        return factory

    return add


def filter_names() -> list[str]:
    """Every registered filter, sorted."""
    return sorted(_FILTERS)


@register_filter("regex")
def regex(
    regex_pattern: str = r"#### (\-?[0-9\.\,]+)", group_select: int = 0, fallback: str = "[invalid]"
) -> Filter:
    """lm-eval's ``regex``: the ``group_select``-th match, stripped, or ``fallback``."""
    pattern = re.compile(regex_pattern)

    def extract(text: str) -> str:
        matches = pattern.findall(text if isinstance(text, str) else "")
        if not matches:
            return fallback
        match = matches[group_select]
        if isinstance(match, tuple):
            groups = [m for m in match if m]
            match = groups[0] if groups else fallback
        return str(match).strip()

    return lambda responses: [extract(r) for r in responses]


@register_filter("take_first")
def take_first() -> Filter:
    """Keep only the first response."""
    return lambda responses: responses[:1]


@register_filter("take_first_k")
def take_first_k(k: int) -> Filter:
    """Keep the first ``k`` responses."""
    return lambda responses: responses[:k]


@register_filter("strip")
def strip() -> Filter:
    """Strip surrounding whitespace."""
    return lambda responses: [r.strip() for r in responses]


@register_filter("lowercase")
def lowercase() -> Filter:
    """Lower-case every response."""
    return lambda responses: [r.lower() for r in responses]


@register_filter("uppercase")
def uppercase() -> Filter:
    """Upper-case every response."""
    return lambda responses: [r.upper() for r in responses]


@register_filter("majority_vote")
def majority_vote() -> Filter:
    """The most frequent response (first seen wins a tie), as a one-element list."""
    return lambda responses: [Counter(responses).most_common(1)[0][0]] if responses else []


@dataclass(frozen=True)
class FilterChain:
    """A named sequence of filters."""

    name: str
    steps: tuple[Filter, ...]

    def apply(self, responses: list[str]) -> list[str]:
        """The filtered answers of one document."""
        for step in self.steps:
            responses = step(responses)
        return responses


DEFAULT_FILTER_LIST: list[dict[str, Any]] = [{"name": "none", "filter": [{"function": "take_first"}]}]


def build_chains(filter_list: Sequence[Any] | None, where: str) -> list[FilterChain]:
    """Build a task's chains from its ``filter_list``; any problem is :class:`BadInput` naming ``where``."""
    specs = list(filter_list) if filter_list else DEFAULT_FILTER_LIST
    chains = []
    for i, spec in enumerate(specs):
        at = f"{where}: filter_list[{i}]"
        if not isinstance(spec, dict) or "name" not in spec or not isinstance(spec.get("filter"), list):
            raise BadInput(f"{at}: expected a mapping with 'name' and a 'filter' list")
        steps = []
        for j, step in enumerate(spec["filter"]):
            step_at = f"{at}.filter[{j}]"
            if not isinstance(step, dict) or "function" not in step:
                raise BadInput(f"{step_at}: expected a mapping with 'function'")
            options = {k: v for k, v in step.items() if k != "function"}
            factory = _FILTERS.get(step["function"])
            if factory is None:
                known = ", ".join(filter_names())
                raise BadInput(f"{step_at}: unknown filter {step['function']!r} (known: {known})")
            try:
                steps.append(factory(**options))
            except re.error as exc:
                raise BadInput(f"{step_at}: regex does not compile: {exc}") from exc
            except TypeError as exc:
                raise BadInput(f"{step_at}: bad options for {step['function']}: {exc}") from exc
        chains.append(FilterChain(str(spec["name"]), tuple(steps)))
    names = [c.name for c in chains]
    if len(set(names)) != len(names):
        raise BadInput(f"{where}: filter_list names must be unique, got {names}")
    return chains
