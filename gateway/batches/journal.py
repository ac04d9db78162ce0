"""Batch jobs and their journal: one JSON file per job under ``<cache_dir>/batches``, rewritten atomically.

Durability: every change of a job that must survive a restart (its lines and
their keys at creation, each upstream batch id once the provider gave it,
each chunk's outcome once its results are recorded, the output files) is
written before the gateway acts on it further, by a fsynced rename. A
gateway killed at any point reloads every unfinished job and carries on: a
chunk the provider may have accepted just before the kill is found again by
the metadata it was submitted with, never submitted twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from cache.atomic import write_atomic

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
LineState = Literal["cached", "pending", "ok", "failed"]


class Request(BaseModel):
    """One distinct request of a batch: identical lines share it (and its key)."""

    key: str
    model: str
    body: dict[str, Any]
    task: str | None = None
    sample: int | None = None
    sample_of: str | None = None
    state: LineState = "pending"
    error: dict[str, Any] | None = None  # OpenAI's error object, for the error file


class Chunk(BaseModel):
    """The misses of one model sent together: one upstream batch, or one run of the local engine."""

    model: str
    engine: Literal["upstream", "local"]
    keys: list[str]
    upstream_batch_id: str | None = None
    done: bool = False


class BatchJob(BaseModel):
    """A client's batch: its lines (``custom_id`` → key), the distinct requests and how they are sent."""

    id: str
    run_id: str
    endpoint: str
    input_file_id: str
    completion_window: str = "24h"
    metadata: dict[str, Any] | None = None
    created_at: int
    status: str = "in_progress"
    lines: list[tuple[str, str]] = Field(default_factory=list)  # (custom_id, key), in the client's order
    requests: dict[str, Request] = Field(default_factory=dict)
    chunks: list[Chunk] = Field(default_factory=list)
    times: dict[str, int] = Field(default_factory=dict)  # in_progress_at, completed_at, cancelling_at, ...
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job is over (its files written, or never to be)."""
        return self.status in TERMINAL

    def counts(self) -> dict[str, int]:
        """OpenAI's ``request_counts``: lines in all, answered, failed."""
        states = [self.requests[key].state for _, key in self.lines]
        done = sum(s in ("cached", "ok") for s in states)
        return {"total": len(states), "completed": done, "failed": states.count("failed")}

    def as_batch(self) -> dict[str, Any]:
        """The job as OpenAI's ``Batch`` object."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 24 * 3600,
            **{name: self.times.get(name) for name in _TIMES},
            "request_counts": self.counts(),
            "metadata": self.metadata,
        }


_TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class Journal:
    """The jobs kept under ``<cache_dir>/batches``, one ``<id>.json`` each."""

    def __init__(self, cache_dir: Path) -> None:
        self.folder = cache_dir / "batches"

    def _path(self, batch_id: str) -> Path | None:
        if not (batch_id.startswith("batch_") and batch_id[6:].isalnum()):
            return None
        return self.folder / f"{batch_id}.json"

    def save(self, job: BatchJob) -> None:
        """Keep ``job`` as it is now (durably, before the caller goes on)."""
        path = self._path(job.id)
        assert path is not None
        write_atomic(path, job.model_dump_json().encode())

    def load(self, batch_id: str) -> BatchJob | None:
        """The job ``batch_id``, or None when there is none."""
        path = self._path(batch_id)
        if path is None or not path.is_file():
            return None
        return BatchJob.model_validate_json(path.read_bytes())

    def all(self) -> list[BatchJob]:
        """Every job kept, oldest first."""
        if not self.folder.is_dir():
            return []
        jobs = [BatchJob.model_validate_json(p.read_bytes()) for p in self.folder.glob("batch_*.json")]
        return sorted(jobs, key=lambda job: (job.created_at, job.id))
