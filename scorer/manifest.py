"""The run manifest: everything `scorer score` needs to rebuild a run's requests without a model.

Stored as ``<cache_dir>/runs/<run_id>/scorer/manifest.json`` next to the
gateway's records: the tasks and their full config, the model (client name and
upstream name, which the cache keys use), seed, limits, generation kwargs and
versions. A manifest whose ``schema`` is newer than this code understands is
refused, not guessed at.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from scorer.errors import BadInput

MANIFEST_SCHEMA = 1
# lm-eval's two ways of sending generate_until: num_concurrent=1 (its default) adds the EOS string to
# every stop list, num_concurrent>1 does not. The scorer matches one, so its keys meet lm-eval's.
SEQUENTIAL, CONCURRENT = "sequential", "concurrent"
LMEVAL_MODES = (SEQUENTIAL, CONCURRENT)
SCORER_VERSION = "0.1.0"


@dataclass
class TaskEntry:
    """One task of a run: its config as run, and its document snapshots."""

    config: dict[str, Any]
    n_eval: int
    n_eval_total: int
    train_pool_size: int = 0
    shots: list[list[int]] = field(default_factory=list)  # per evaluated document: its few-shot pool indices


@dataclass
class Manifest:
    """A run as the scorer made it."""

    run_id: str
    model: str
    upstream_model: str
    gateway: str
    seed: int
    limit: int | None
    gen_kwargs: dict[str, Any]
    cache_namespace: str = ""  # what the cache keys name the model by (older manifests: upstream_model)
    lmeval_mode: str = "concurrent"  # which lm-eval path's stop sequences (older manifests: concurrent)
    eos_string: str | None = None  # the tokenizer's EOS string (sequential mode adds it to stop)
    tasks: dict[str, TaskEntry] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # lm-eval groups over the tasks, by name
    judge_namespaces: dict[str, str] = field(default_factory=dict)  # judge model → its cache namespace
    rounds: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "eval": []})
    created: float = field(default_factory=time.time)
    schema: int = MANIFEST_SCHEMA
    versions: dict[str, str] = field(
        default_factory=lambda: {"scorer": SCORER_VERSION, "python": platform.python_version()}
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        """Parse a stored manifest; a newer schema or a malformed file is :class:`BadInput`."""
        if not isinstance(data, dict):
            raise BadInput(f"{where}: not a manifest (expected a JSON object)")
        schema = data.get("schema")
        if not isinstance(schema, int):
            raise BadInput(f"{where}: not a manifest (no integer 'schema')")
        if schema > MANIFEST_SCHEMA:
            raise BadInput(
                f"{where}: manifest schema {schema} is newer than this scorer understands "
                f"({MANIFEST_SCHEMA}); upgrade replaygate"
            )
        try:
            tasks = {name: TaskEntry(**entry) for name, entry in data["tasks"].items()}
            return cls(**{**data, "tasks": tasks})
        except (KeyError, TypeError, AttributeError) as exc:
            raise BadInput(f"{where}: malformed manifest: {exc}") from exc
