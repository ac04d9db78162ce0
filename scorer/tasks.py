"""Task definitions: a YAML format close to lm-evaluation-harness's, validated when loaded.

A task file names its data (``dataset``), the splits it draws few-shot
examples from (``train_split``) and evaluates on (``eval_split``), Jinja2
templates for ``doc_to_text`` / ``doc_to_target`` / ``doc_to_choice``, its
``output_type``, ``generation_kwargs``, a ``filter_list`` and a
``metric_list``. lm-eval's own key names (``dataset_path``,
``dataset_kwargs``, ``test_split``, ``training_split``, ``num_fewshot``, …)
are accepted too, so its users can port tasks as they are.

Everything that can be checked without data is checked by :func:`parse_task`:
missing fields, unknown metrics or filters, templates that do not compile,
regexes that do not compile. Each problem is one :class:`BadInput` line that
names the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scorer.errors import BadInput
from scorer.filters import FilterChain, build_chains
from scorer.helpers import HELPER_KEYS, describe, function_ref, is_function, load_function
from scorer.judge.config import judge_fields
from scorer.metrics import Metric, get_metric, registry
from scorer.metrics.base import OUTPUT_TYPES
from scorer.templates import check_template

BUILTIN_DIR = Path(__file__).parent / "tasks"

DEFAULT_METRICS: dict[str, list[str]] = {
    "generate_until": ["exact_match"],
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
}
# lm-eval keys we accept and keep but do not act on.
_IGNORED = {
    "tag",
    "metadata",  # but its version is the task's, as lm-eval reports it
    "should_decontaminate",
    "doc_to_decontamination_query",
    "unsafe_code",
}
_KNOWN = {
    "task",
    "version",
    "description",
    "dataset",
    "eval_split",
    "train_split",
    "output_type",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "target_delimiter",
    "fewshot_delimiter",
    "fewshot",
    "generation_kwargs",
    "repeats",
    "api",
    "filter_list",
    "metric_list",
    "max_length",
    "judge",  # scorer.judge.config
    "task_alias",  # the alias results report
    "turns",
    # lm-eval spellings, folded into the above by _fold_lmeval_keys
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "test_split",
    "validation_split",
    "training_split",
    "fewshot_split",
    "num_fewshot",
    "fewshot_config",
    "process_docs",
    "process_results",
} | _IGNORED
_METRIC_KEYS = {"metric", "aggregation", "higher_is_better"}
# Keys only lm-eval's task format has: their presence means its split rules apply.
_LMEVAL_ONLY = {"test_split", "validation_split", "training_split", "fewshot_split", "fewshot_config"}
# fewshot_config keys the scorer acts on (split is folded into train_split).
_FEWSHOT_CONFIG_KEYS = {"sampler", "split", "samples", "target_delimiter", "fewshot_delimiter"}
SAMPLERS = ("default", "first_n")


@dataclass(frozen=True)
class MetricSpec:
    """One entry of a task's ``metric_list``, resolved against the registry."""

    metric: Metric
    options: dict[str, Any]
    higher_is_better: bool

    @property
    def name(self) -> str:
        """The name results report."""
        return self.metric.reported_name(self.options)


@dataclass(frozen=True)
class TaskConfig:
    """A validated task. ``raw`` is its normalised form, stored in manifests and results."""

    name: str
    raw: dict[str, Any]
    filters: tuple[FilterChain, ...]
    metrics: tuple[MetricSpec, ...]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def output_type(self) -> str:
        """``generate_until``, ``multiple_choice``, ``loglikelihood`` or ``loglikelihood_rolling``."""
        return str(self.raw["output_type"])

    @property
    def num_fewshot(self) -> int:
        """How many examples precede each prompt."""
        return int(self.raw["fewshot"]["num"])

    @property
    def fewshot_from_model(self) -> bool:
        """Whether few-shot targets are the model's own answers on the train items."""
        return self.raw["fewshot"]["targets"] == "model" and self.num_fewshot > 0

    @property
    def version(self) -> Any:
        """The task's version (reported in results)."""
        return self.raw.get("version", 1.0)

    @property
    def alias(self) -> str:
        """The name results show: lm-eval's ``task_alias`` when the file gives one."""
        return str(self.raw.get("task_alias") or self.name)


def _metadata_version(metadata: Any, lmeval_form: bool) -> Any:
    """lm-eval's task version, ``metadata.version`` (the scorer's own ``version:`` wins over it).

    Without one, a file in lm-eval's form (``dataset_path``) is reported as lm-eval
    reports it, ``"Yaml"``; the scorer's own form as 1.0.
    """
    if isinstance(metadata, dict) and metadata.get("version") is not None:
        return metadata["version"]
    return "Yaml" if lmeval_form else 1.0


def _fold_lmeval_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Rewrite lm-eval key names into ours (ours win when both are given).

    The few-shot pool is chosen as lm-eval chooses it: ``fewshot_config.split``,
    else ``fewshot_split``, else the training split, else the validation split,
    else the evaluated split; the evaluated document is left out of its own
    examples only when that explicit few-shot split is the test split (both
    unset counts as equal, as in lm-eval).
    """
    data = dict(data)
    if "dataset_path" in data:
        kwargs = data.pop("dataset_kwargs", None) or {}
        dataset = {"path": data.pop("dataset_path"), **kwargs}
        if data.get("dataset_name") is not None:
            dataset["name"] = data["dataset_name"]
        data.pop("dataset_name", None)
        data.setdefault("dataset", dataset)
    lmeval = any(k in data for k in _LMEVAL_ONLY)
    config = data.pop("fewshot_config", None) or {}
    if not isinstance(config, dict):
        raise BadInput(f"{where}: fewshot_config must be a mapping")
    unsupported = sorted(set(config) - _FEWSHOT_CONFIG_KEYS)
    if unsupported:
        raise BadInput(f"{where}: fewshot_config.{unsupported[0]} is not supported by the scorer")
    explicit = config.get("split") or data.get("fewshot_split")
    test_split = data.get("test_split")
    pool_split = explicit or data.get("training_split") or data.get("validation_split")
    for theirs in ("test_split", "validation_split"):
        if data.get(theirs) is not None:
            data.setdefault("eval_split", data[theirs])
    for theirs in ("test_split", "validation_split", "training_split", "fewshot_split"):
        data.pop(theirs, None)
    if pool_split is not None:
        data.setdefault("train_split", pool_split)
    fewshot = dict(data.get("fewshot") or {})
    if "num_fewshot" in data:
        num = data.pop("num_fewshot")
        fewshot.setdefault("num", 0 if num is None else num)
        if num == 0:  # lm-eval's simple_evaluate never overrides a written 0
            fewshot.setdefault("pinned", True)
    for key in ("sampler", "samples", "target_delimiter", "fewshot_delimiter"):
        if key in config:
            fewshot.setdefault(key, config[key])
    if lmeval:
        fewshot.setdefault("exclude_eval_doc", explicit == test_split)
    if fewshot:
        data["fewshot"] = fewshot
    return data


def parse_task(data: Any, where: str, base_dir: Path | None = None, strict: bool = True) -> TaskConfig:
    """Validate a task mapping; relative data files resolve against ``base_dir``.

    Raises:
        BadInput: one line naming ``where`` and the field at fault.
    """
    if not isinstance(data, dict):
        raise BadInput(f"{where}: a task must be a mapping, got {type(data).__name__}")
    lmeval_form = "dataset_path" in data
    data = _fold_lmeval_keys(data, where)
    unknown = sorted(set(data) - _KNOWN)
    if unknown and strict:
        raise BadInput(f"{where}: unknown field(s) {', '.join(unknown)}")
    may_be_empty = set()
    if data.get("output_type") == "loglikelihood_rolling":  # scores doc_to_target alone, as lm-eval
        data.setdefault("doc_to_text", "")
        may_be_empty.add("doc_to_text")
    for required in ("task", "dataset", "eval_split", "doc_to_text", "doc_to_target"):
        value = data.get(required)
        if value is None or (value == "" and required not in may_be_empty):
            raise BadInput(f"{where}: missing required field '{required}'")
    name = str(data["task"])
    at = f"{where} (task {name})"
    raw: dict[str, Any] = {
        "task": name,
        "version": data.get("version", _metadata_version(data.get("metadata"), lmeval_form)),
        "description": data.get("description", "") or "",
        "dataset": _dataset(data["dataset"], at, base_dir),
        "eval_split": str(data["eval_split"]),
        "train_split": data.get("train_split"),
        "output_type": data.get("output_type", "generate_until"),
        "doc_to_text": data["doc_to_text"],
        "doc_to_target": data["doc_to_target"],
        "doc_to_choice": data.get("doc_to_choice"),
        "target_delimiter": data.get("target_delimiter", " "),
        "fewshot_delimiter": data.get("fewshot_delimiter", "\n\n"),
        "repeats": int(data.get("repeats", 1)),
        "api": data.get("api", "completions"),
        "max_length": int(data.get("max_length", 2048)),
        "process_docs": data.get("process_docs"),
        "process_results": data.get("process_results"),
    }
    if data.get("task_alias") is not None:  # lm-eval reports it as the task's alias
        raw["task_alias"] = str(data["task_alias"])
    for key in HELPER_KEYS:  # a helper that cannot be imported fails here, not halfway through a run
        if is_function(raw[key]):
            load_function(raw[key], f"{at}: {key}")
        elif key.startswith("process_") and raw[key] is not None:
            raise BadInput(f"{at}: {key} must be a !function helper, got {raw[key]!r}")
    if raw["output_type"] not in OUTPUT_TYPES:
        raise BadInput(
            f"{at}: output_type {raw['output_type']!r} is not one of {', '.join(sorted(OUTPUT_TYPES))}"
        )
    if raw["output_type"] == "multiple_choice" and raw["doc_to_choice"] is None:
        raise BadInput(f"{at}: missing required field 'doc_to_choice' (output_type multiple_choice)")
    if raw["api"] not in ("completions", "chat"):
        raise BadInput(f"{at}: api must be 'completions' or 'chat', got {raw['api']!r}")
    if raw["api"] == "chat" and raw["output_type"] != "generate_until":
        raise BadInput(
            f"{at}: api 'chat' only serves generate_until tasks (chat endpoints give no prompt logprobs)"
        )
    raw["fewshot"] = _fewshot(data.get("fewshot"), raw, at)
    raw["generation_kwargs"] = _generation_kwargs(data.get("generation_kwargs"), raw, at)
    raw.update(judge_fields(data, raw, at))
    for field in ("doc_to_text", "doc_to_target", "doc_to_choice", "description"):
        if isinstance(raw[field], str):
            check_template(raw[field], f"{at}: {field}")
    filters = build_chains(data.get("filter_list"), at)
    raw["filter_list"] = data.get("filter_list")
    metric_list = data.get("metric_list")
    if not metric_list and not (
        metric_list == [] and raw.get("judge")
    ):  # a judged task may have no other metric
        metric_list = [{"metric": m} for m in DEFAULT_METRICS[raw["output_type"]]]
    raw["metric_list"] = metric_list
    if raw["process_results"] is not None:
        if not data.get("metric_list"):
            raise BadInput(f"{at}: process_results needs a metric_list naming the values it returns")
        metrics = tuple(_helper_metric(entry, i, at) for i, entry in enumerate(metric_list))
    else:
        metrics = tuple(_metric(entry, i, raw["output_type"], at) for i, entry in enumerate(metric_list))
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise BadInput(f"{at}: metric_list repeats a metric: {names}")
    return TaskConfig(name, raw, tuple(filters), metrics)


def _dataset(value: Any, at: str, base_dir: Path | None) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict) or not value.get("path"):
        raise BadInput(
            f"{at}: dataset needs a 'path' (json, jsonl, csv, parquet, builtin:NAME or a hub name)"
        )
    dataset = dict(value)
    files = dataset.get("data_files")
    if files is not None:
        if isinstance(files, str | list):
            files = {"train": files}
        if not isinstance(files, dict):
            raise BadInput(f"{at}: dataset.data_files must map split names to files")
        dataset["data_files"] = {
            str(split): [_resolve(p, base_dir) for p in (paths if isinstance(paths, list) else [paths])]
            for split, paths in files.items()
        }
    return dataset


def _resolve(path: Any, base_dir: Path | None) -> str:
    p = Path(str(path)).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return str(p)


def _fewshot(value: Any, raw: dict[str, Any], at: str) -> dict[str, Any]:
    """The few-shot settings: how many, whose targets, which sampler, the pool, the delimiters."""
    fewshot = {
        "num": 0,
        "targets": "gold",
        "sampler": "default",
        "exclude_eval_doc": raw["train_split"] in (None, raw["eval_split"]),
        "target_delimiter": raw["target_delimiter"],
        "fewshot_delimiter": raw["fewshot_delimiter"],
        **(value or {}),
    }
    for key in ("target_delimiter", "fewshot_delimiter"):  # lm-eval: null inherits the task's
        if fewshot[key] is None:
            fewshot[key] = raw[key]
    if not isinstance(fewshot["num"], int) or fewshot["num"] < 0:
        raise BadInput(f"{at}: fewshot.num must be a non-negative integer")
    if not isinstance(fewshot.get("pinned", False), bool):
        raise BadInput(f"{at}: fewshot.pinned must be true or false")
    if fewshot["targets"] not in ("gold", "model"):
        raise BadInput(f"{at}: fewshot.targets must be 'gold' or 'model', got {fewshot['targets']!r}")
    if fewshot["targets"] == "model" and raw["output_type"] != "generate_until":
        raise BadInput(f"{at}: fewshot.targets 'model' needs output_type generate_until")
    if fewshot["sampler"] not in SAMPLERS:
        choices = " or ".join(SAMPLERS)
        raise BadInput(
            f"{at}: fewshot_config.sampler {fewshot['sampler']!r} is not supported (use {choices})"
        )
    samples = fewshot.get("samples")
    if samples is not None and not (isinstance(samples, list) and all(isinstance(d, dict) for d in samples)):
        raise BadInput(f"{at}: fewshot_config.samples must be a list of documents (mappings)")
    unknown = sorted(set(fewshot) - _FEWSHOT_FIELDS)
    if unknown:
        raise BadInput(f"{at}: unknown fewshot field(s) {', '.join(unknown)}")
    return fewshot


_FEWSHOT_FIELDS = {
    "num",
    "pinned",  # --num-fewshot leaves num alone (lm-eval: a task file's explicit num_fewshot: 0)
    "targets",
    "sampler",
    "samples",
    "exclude_eval_doc",
    "target_delimiter",
    "fewshot_delimiter",
}


def _generation_kwargs(value: Any, raw: dict[str, Any], at: str) -> dict[str, Any] | None:
    if raw["output_type"] != "generate_until":
        return None
    if value is None:
        # lm-eval's default_gen_kwargs
        return {
            "temperature": 0.0,
            "do_sample": False,
            "max_gen_toks": 256,
            "until": [raw["fewshot_delimiter"]],
        }
    if not isinstance(value, dict):
        raise BadInput(f"{at}: generation_kwargs must be a mapping")
    kwargs = dict(value)
    if "temperature" in kwargs:
        kwargs["temperature"] = float(kwargs["temperature"])
    kwargs.setdefault("until", [raw["fewshot_delimiter"]])
    return kwargs


def _metric(entry: Any, i: int, output_type: str, at: str) -> MetricSpec:
    where = f"{at}: metric_list[{i}]"
    if isinstance(entry, str):
        entry = {"metric": entry}
    if not isinstance(entry, dict) or "metric" not in entry:
        raise BadInput(f"{where}: expected a mapping with 'metric'")
    metric = get_metric(str(entry["metric"]))
    if metric is None:
        known = ", ".join(sorted(registry()))
        raise BadInput(f"{where}: unknown metric {entry['metric']!r} (known: {known})")
    if output_type not in metric.output_types:
        raise BadInput(f"{where}: metric {metric.name} does not apply to output_type {output_type}")
    options = {k: v for k, v in entry.items() if k not in _METRIC_KEYS}
    unknown = sorted(set(options) - metric.options)
    if unknown:
        raise BadInput(f"{where}: metric {metric.name} has no option(s) {', '.join(unknown)}")
    if entry.get("aggregation", "mean") not in ("mean", None) and metric.stderr == "mean":
        raise BadInput(f"{where}: aggregation {entry['aggregation']!r} is not supported for {metric.name}")
    for pattern in options.get("regexes_to_ignore") or ():
        _check_regex(pattern, f"{where}.regexes_to_ignore")
    return MetricSpec(metric, options, bool(entry.get("higher_is_better", metric.higher_is_better)))


def _helper_metric(entry: Any, i: int, at: str) -> MetricSpec:
    """A ``metric_list`` entry naming a value ``process_results`` returns, averaged (the common case)."""
    where = f"{at}: metric_list[{i}]"
    if isinstance(entry, str):
        entry = {"metric": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("metric"), str):
        raise BadInput(f"{where}: expected a mapping with 'metric' (a name process_results returns)")
    if entry.get("aggregation", "mean") != "mean":
        raise BadInput(
            f"{where}: aggregation {entry['aggregation']!r} is not supported with process_results (only mean)"
        )
    metric = Metric(entry["metric"], OUTPUT_TYPES, True, frozenset(), _from_process_results)
    return MetricSpec(metric, {}, bool(entry.get("higher_is_better", True)))


def _from_process_results(sample: Any, options: Mapping[str, Any]) -> Any:
    raise AssertionError("process_results values are taken from its dict, not computed per metric")


def _check_regex(pattern: Any, where: str) -> None:
    import re

    try:
        re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise BadInput(f"{where}: regex {pattern!r} does not compile: {exc}") from exc


# -- finding task files --------------------------------------------------------


class _TaskLoader(yaml.SafeLoader):
    """YAML as lm-eval reads task files: ``!function module.name`` names a helper beside the file."""

    base_dir = Path(".")


def _function_tag(loader: _TaskLoader, node: yaml.Node) -> dict[str, str]:
    return function_ref(str(loader.construct_scalar(node)), loader.base_dir)  # type: ignore[arg-type]


_TaskLoader.add_constructor("!function", _function_tag)  # type: ignore[arg-type]


def _load_yaml(text: str, base_dir: Path) -> Any:
    loader = _TaskLoader(text)
    loader.base_dir = base_dir
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(path: Path, depth: int = 0) -> Any:
    """A task file's mapping with lm-eval's ``include:`` (a path relative to the file) merged under it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read task file: {exc.strerror}") from exc
    try:
        data = _load_yaml(text, path.parent)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"{path}:{line} not valid YAML: {problem}") from exc
    if isinstance(data, dict) and "include" in data:
        if depth > 8:
            raise BadInput(f"{path}: include nests too deep (a cycle?)")
        included = _read_yaml(path.parent / str(data.pop("include")), depth + 1)
        if not isinstance(included, dict):
            raise BadInput(f"{path}: include must name a YAML mapping")
        data = {**included, **data}
    return data


def _refuse_functions(data: Any, where: str, key_path: str = "") -> None:
    """One line naming the key (dotted, from the top) of the first ``!function`` the scorer does not run.

    The helpers of :data:`HELPER_KEYS` at the top level run (:mod:`scorer.helpers`); keys the scorer
    ignores (``doc_to_decontamination_query``, ``metadata``, …) are neither run nor refused.
    """
    if isinstance(data, dict):
        for key, value in data.items():
            if not key_path and key in _IGNORED:
                continue
            at = f"{key_path}.{key}" if key_path else str(key)
            if is_function(value):
                if not key_path and key in HELPER_KEYS:
                    continue
                raise BadInput(
                    f"{where}: {at} is {describe(value)}: the scorer runs Python helpers only "
                    f"for {', '.join(HELPER_KEYS)}"
                )
            _refuse_functions(value, where, at)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _refuse_functions(value, where, f"{key_path}[{i}]")


def read_task_yaml(path: Path) -> Any:
    """A task or group file's mapping as written (``include:`` merged, ``!function`` as references)."""
    return _read_yaml(path)


def load_task_file(path: Path) -> TaskConfig:
    """Read and validate one task YAML file (lm-eval's ``include:`` resolved beside it)."""
    data = _read_yaml(path)
    _refuse_functions(data, str(path))
    return parse_task(data, str(path), base_dir=path.parent)


def task_files(include_paths: list[Path]) -> dict[str, Path]:
    """Task name → file, built-ins first, then each include path (later ones win)."""
    found: dict[str, Path] = {}
    for folder in [BUILTIN_DIR, *include_paths]:
        for path in sorted(folder.rglob("*.yaml")):  # as lm-eval: subfolders too (built-in mmlu/)
            try:
                data = _load_yaml(path.read_text(), path.parent)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and isinstance(data.get("task"), str):  # a group lists tasks
                found[data["task"]] = path
    return found


def resolve_tasks(spec: str, include_paths: list[Path]) -> list[TaskConfig]:
    """``TASK[,TASK…]``: each a known task name or a path to a task file."""
    known = task_files(include_paths)
    tasks = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        path = Path(item)
        if item in known:
            tasks.append(load_task_file(known[item]))
        elif path.suffix in (".yaml", ".yml") and path.exists():
            tasks.append(load_task_file(path))
        else:
            raise BadInput(
                f"unknown task {item!r}: not a task file and not one of {', '.join(sorted(known))}"
            )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise BadInput(f"task list names a task twice: {names}")
    return tasks


def with_overrides(task: TaskConfig, overrides: Mapping[str, Any], where: str) -> TaskConfig:
    """``task`` with top-level fields replaced by ``overrides``, validated again."""
    return parse_task({**task.raw, **overrides}, where)
