"""lm-eval's task groups: ``group`` files listing tasks, tags or other groups, and their aggregated scores.

A group file (``group: NAME``, ``task: [...]``, ``aggregate_metric_list``,
``group_alias``, ``metadata.version``) names its children by task name, by
``tag`` (every task file carrying that tag) or by another group's name. A
group's score is lm-eval's ``Group.aggregate``: over all its leaf tasks
(recursively), each metric's mean weighted by ``sample_len`` when
``weight_by_size`` (else unweighted), its stderr pooled
(``pooled_sample_stderr``) or that of an unweighted mean; a group without
``aggregate_metric_list`` reports only its name. Groups are kept in the run
manifest, so `scorer score` aggregates them again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scorer.errors import BadInput
from scorer.tasks import BUILTIN_DIR, TaskConfig, load_task_file, read_task_yaml, resolve_tasks

_GROUP_KEYS = {"group", "group_alias", "task", "aggregate_metric_list", "metadata"}
_AGG_KEYS = {"metric", "filter_list", "aggregation", "weight_by_size"}


@dataclass(frozen=True)
class AggregateMetric:
    """One ``aggregate_metric_list`` entry: which metric, over which filters (None: every one found)."""

    metric: str
    filter_list: list[str] | None = None
    weight_by_size: bool = True


@dataclass(frozen=True)
class GroupConfig:
    """A validated group: its children's names (tags already expanded) and how it aggregates."""

    name: str
    alias: str | None
    children: list[str]
    aggregate: list[AggregateMetric]
    version: Any = "N/A"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the manifest)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupConfig:
        """The inverse of :meth:`to_dict`."""
        return cls(**{**data, "aggregate": [AggregateMetric(**a) for a in data["aggregate"]]})


@dataclass
class Selection:
    """What a ``TASK[,TASK…]`` argument names: the leaf tasks to run and the groups over them."""

    tasks: list[TaskConfig]
    groups: dict[str, GroupConfig]


def _aggregate_metric(entry: Any, where: str) -> AggregateMetric:
    if not isinstance(entry, dict) or not isinstance(entry.get("metric"), str):
        raise BadInput(f"{where}: expected a mapping with 'metric'")
    unknown = sorted(set(entry) - _AGG_KEYS)
    if unknown:
        raise BadInput(f"{where}: unknown field(s) {', '.join(unknown)}")
    if entry.get("aggregation", "mean") != "mean":
        raise BadInput(f"{where}: aggregation {entry['aggregation']!r} is not supported (lm-eval: only mean)")
    filters = entry.get("filter_list")
    if isinstance(filters, str):
        filters = [filters]
    return AggregateMetric(entry["metric"], filters, bool(entry.get("weight_by_size", True)))


@dataclass
class _Index:
    """Every task, group and tag file the include paths hold (built-ins first, later paths win)."""

    tasks: dict[str, Path]
    groups: dict[str, tuple[Path, dict[str, Any]]]
    tags: dict[str, list[str]]


def _index(include_paths: list[Path]) -> _Index:
    index = _Index({}, {}, {})
    for folder in [BUILTIN_DIR, *include_paths]:
        for path in sorted(folder.rglob("*.yaml")):
            try:
                data = read_task_yaml(path)
            except BadInput:
                continue
            if not isinstance(data, dict):
                continue
            if isinstance(data.get("group"), str) and "task" in data:
                index.groups[data["group"]] = (path, data)
            elif isinstance(data.get("task"), str):
                index.tasks[data["task"]] = path
                tags = data.get("tag") or []
                for tag in [tags] if isinstance(tags, str) else tags:
                    index.tags.setdefault(str(tag), []).append(data["task"])
    return index


def _parse_group(path: Path, data: dict[str, Any]) -> GroupConfig:
    where = f"{path} (group {data['group']})"
    unknown = sorted(set(data) - _GROUP_KEYS)
    if unknown:
        raise BadInput(f"{where}: unknown field(s) {', '.join(unknown)}")
    children = data["task"]
    if isinstance(children, str):
        children = [children]
    if not isinstance(children, list) or not children:
        raise BadInput(f"{where}: task must list the group's tasks")
    for i, child in enumerate(children):
        if not isinstance(child, str):
            raise BadInput(
                f"{where}: task[{i}] is a mapping: inline task or group definitions are not supported"
            )
    entries = data.get("aggregate_metric_list") or []
    if isinstance(entries, dict):
        entries = [entries]
    aggregate = [_aggregate_metric(e, f"{where}: aggregate_metric_list[{i}]") for i, e in enumerate(entries)]
    version = (data.get("metadata") or {}).get("version", "N/A")
    return GroupConfig(data["group"], data.get("group_alias"), list(children), aggregate, version)


def resolve_selection(spec: str, include_paths: list[Path]) -> Selection:
    """``TASK[,TASK…]``: task names or files, groups (expanded to their leaves), or tags."""
    index = _index(include_paths)
    tasks: dict[str, TaskConfig] = {}
    groups: dict[str, GroupConfig] = {}

    def add_task(name: str, where: str) -> str:
        if name not in tasks:
            if name not in index.tasks:
                raise BadInput(f"{where}: no task, group or tag named {name!r}")
            tasks[name] = load_task_file(index.tasks[name])
        return name

    def expand(name: str, where: str, depth: int = 0) -> list[str]:
        """The names ``name`` stands for among a group's children (a tag stands for its tasks)."""
        if depth > 16:
            raise BadInput(f"{where}: groups nest too deep (a cycle?)")
        if name in index.groups:
            if name not in groups:
                path, data = index.groups[name]
                group = _parse_group(path, data)
                children: list[str] = []
                for child in group.children:
                    children.extend(expand(child, f"{path} (group {name})", depth + 1))
                groups[name] = GroupConfig(group.name, group.alias, children, group.aggregate, group.version)
            return [name]
        if name in index.tags and name not in index.tasks:
            return [add_task(t, where) for t in index.tags[name]]
        return [add_task(name, where)]

    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item in index.groups or item in index.tags or item in index.tasks:
            expand(item, "task list")
        else:  # a path to a task file
            for task in resolve_tasks(item, include_paths):
                if task.name in tasks:
                    raise BadInput(f"task list names a task twice: {task.name}")
                tasks[task.name] = task
    return Selection(list(tasks.values()), groups)


def leaf_tasks(name: str, groups: dict[str, GroupConfig]) -> list[str]:
    """The tasks under group ``name``, recursively, in order."""
    leaves: list[str] = []
    for child in groups[name].children:
        leaves.extend(leaf_tasks(child, groups) if child in groups else [child])
    return leaves


def _bottom_up(groups: dict[str, GroupConfig]) -> list[str]:
    order: list[str] = []

    def visit(name: str) -> None:
        for child in groups[name].children:
            if child in groups and child not in order:
                visit(child)
        if name not in order:
            order.append(name)

    for name in groups:
        visit(name)
    return order


def _pooled_stderr(stderrs: list[float], sizes: list[int]) -> float:
    """lm-eval's ``pooled_sample_stderr``."""
    variance = sum((n - 1) * s**2 * n for n, s in zip(sizes, stderrs, strict=True)) / (
        sum(sizes) - len(sizes)
    )
    return math.sqrt(variance / sum(sizes))


def aggregate_group(
    group: GroupConfig, groups: dict[str, GroupConfig], results: dict[str, Any]
) -> dict[str, Any]:
    """Group ``group``'s results entry from its leaf tasks' entries in ``results`` (lm-eval's shape)."""
    entry: dict[str, Any] = {"alias": group.alias or group.name, "name": group.name}
    if not group.aggregate:
        return entry
    leaves = [name for name in leaf_tasks(group.name, groups) if name in results]
    entry["sample_len"] = sum(results[name].get("sample_len", 0) for name in leaves)
    counts: dict[str, int] = {}
    for agg in group.aggregate:
        filters = agg.filter_list
        if filters is None:
            prefix = f"{agg.metric},"
            found = {key[len(prefix) :] for n in leaves for key in results[n] if key.startswith(prefix)}
            filters = sorted(f for f in found if "_stderr" not in f)
        for filter_name in filters:
            key, stderr_key = f"{agg.metric},{filter_name}", f"{agg.metric}_stderr,{filter_name}"
            having = [results[n] for n in leaves if key in results[n]]
            if not having:
                continue
            values = [r[key] for r in having]
            sizes = [r.get("sample_len", 0) for r in having]
            stderrs = [r[stderr_key] for r in having if r.get(stderr_key) is not None]
            weights = sizes if agg.weight_by_size else [1] * len(sizes)
            entry[key] = sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)
            counts[key] = sum(sizes)
            if len(stderrs) == len(values) and "N/A" not in stderrs:
                if agg.weight_by_size:
                    entry[stderr_key] = _pooled_stderr(stderrs, sizes)
                else:
                    entry[stderr_key] = math.sqrt(sum(s**2 for s in stderrs)) / len(stderrs)
            else:
                entry[stderr_key] = "N/A"
    if counts:
        entry["sample_count"] = counts
    return entry


def group_results(groups: dict[str, GroupConfig], results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every group with a scored leaf task, aggregated bottom-up, by name."""
    out: dict[str, dict[str, Any]] = {}
    for name in _bottom_up(groups):
        if any(leaf in results for leaf in leaf_tasks(name, groups)):
            out[name] = aggregate_group(groups[name], groups, results)
    return out
