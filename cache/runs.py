"""Run names and where a run's records live on disk."""

from __future__ import annotations

import re
from pathlib import Path

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
DEFAULT_RUN = "default"


class BadRunId(ValueError):
    """A run-id that could escape the runs folder or is not a plain name."""


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe run name, else raise :class:`BadRunId`."""
    if not RUN_ID_PATTERN.fullmatch(run_id) or run_id in {".", ".."}:
        raise BadRunId(f"invalid run-id {run_id!r}: use 1-128 of letters, digits, '.', '_' and '-'")
    return run_id


def runs_root(cache_dir: Path) -> Path:
    """The folder holding one sub-folder per run."""
    return cache_dir / "runs"


def run_dir(cache_dir: Path, run_id: str) -> Path:
    """The folder of one run's JSONL shards."""
    return runs_root(cache_dir) / check_run_id(run_id)


def list_runs(cache_dir: Path) -> list[str]:
    """Names of the runs that have a folder, sorted."""
    root = runs_root(cache_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and RUN_ID_PATTERN.fullmatch(p.name))
