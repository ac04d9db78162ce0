"""The scorer's side of a run folder, and reading responses back from the cache.

Layout, under ``<cache_dir>/runs/<run_id>/`` (the gateway's JSONL shards sit
directly in that folder; everything of the scorer is in ``scorer/`` so the
gateway's readers never see it)::

    scorer/manifest.json           the run as made (see scorer.manifest)
    scorer/docs/<task>.eval.jsonl  the evaluated documents, as run
    scorer/docs/<task>.train.jsonl the train documents few-shot examples came from
    scorer/results.json            lm-eval-schema results (results-<tag>.json with overrides)
    scorer/samples_<task>.jsonl    one line per document and filter

Every file is written to a temporary name and renamed into place, so a reader
sees the old file or the new one, never half of one.

Nothing here can reach a model: responses come from the diskcache index by
key, else from the run's own records.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from cache.atomic import write_atomic
from cache.index import ResponseIndex
from cache.records import read_records, shard_paths
from cache.runs import BadRunId, check_run_id, run_dir
from scorer.errors import BadInput
from scorer.manifest import Manifest


def default_cache_dir() -> Path:
    """The gateway's default store: ``$REPLAYGATE_HOME/store`` (``~/.cache/replaygate/store``)."""
    home = os.environ.get("REPLAYGATE_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "replaygate") / "store"


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    """Rows as JSON lines."""
    return b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in rows)


class RunFolder:
    """One run's folder and the scorer files in it."""

    def __init__(self, cache_dir: Path, run_id: str) -> None:
        try:
            self.run_id = check_run_id(run_id)
        except BadRunId as exc:
            raise BadInput(str(exc)) from exc
        self.cache_dir = cache_dir
        self.path = run_dir(cache_dir, run_id)
        self.scorer = self.path / "scorer"

    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.scorer / "manifest.json"

    def docs_path(self, task: str, split: str) -> Path:
        """The document snapshot of ``task``'s ``split`` (``eval`` or ``train``)."""
        return self.scorer / "docs" / f"{task}.{split}.jsonl"

    def has_manifest(self) -> bool:
        """Whether ``scorer run`` has made this run."""
        return self.manifest_path.is_file()

    def read_manifest(self) -> Manifest:
        """The manifest; an unknown run-id or a bad manifest is :class:`BadInput`."""
        if not self.has_manifest():
            where = "no such run" if not self.path.is_dir() else "no scorer manifest in it"
            raise BadInput(f"unknown run-id {self.run_id!r}: {where} ({self.manifest_path})")
        try:
            data = orjson.loads(self.manifest_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise BadInput(f"{self.manifest_path}: unreadable manifest: {exc}") from exc
        return Manifest.from_dict(data, str(self.manifest_path))

    def write_manifest(self, manifest: Manifest) -> None:
        """Store ``manifest`` (atomically)."""
        write_atomic(self.manifest_path, orjson.dumps(manifest.to_dict(), option=orjson.OPT_INDENT_2))

    def write_docs(self, task: str, split: str, docs: dict[int, dict[str, Any]]) -> None:
        """Snapshot the documents a round used, by their index in the split."""
        write_atomic(
            self.docs_path(task, split), jsonl_bytes({"index": i, "doc": d} for i, d in docs.items())
        )

    def read_docs(self, task: str, split: str) -> dict[int, dict[str, Any]]:
        """The snapshot written by :meth:`write_docs` (empty if there is none)."""
        path = self.docs_path(task, split)
        if not path.exists():
            return {}
        docs = {}
        with path.open("rb") as handle:
            for line in handle:
                row = orjson.loads(line)
                docs[int(row["index"])] = row["doc"]
        return docs


class ResponseReader:
    """Response bodies by cache key: the index first, then the run's own records.

    Read-only: it never writes the index or the records.
    """

    def __init__(self, cache_dir: Path, run_id: str) -> None:
        self.cache_dir = cache_dir
        self.run_id = run_id
        self._index: ResponseIndex | None = None
        self._from_records: dict[str, bytes] | None = None

    def _open_index(self) -> ResponseIndex | None:
        if self._index is None and (self.cache_dir / "index").is_dir():
            self._index = ResponseIndex(self.cache_dir)
        return self._index

    def get(self, key: str) -> dict[str, Any] | None:
        """The parsed response stored under ``key``, or None."""
        raw = self.get_raw(key)
        return orjson.loads(raw) if raw is not None else None

    def get_raw(self, key: str) -> bytes | None:
        """The stored response bytes under ``key``, or None."""
        index = self._open_index()
        if index is not None:
            body = index.get(key)
            if body is not None:
                return body
        return self._records().get(key)

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """``(key, response or None)`` for each key."""
        keys = list(keys)
        found = self.get_raw_many(keys)
        for key in keys:
            raw = found.get(key)
            yield key, orjson.loads(raw) if raw is not None else None

    def get_raw_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The stored response bytes of those ``keys`` that have one: the index in bulk, then the records."""
        wanted = list(keys)
        index = self._open_index()
        found = index.get_many(wanted) if index is not None else {}
        if len(found) < len(set(wanted)):
            records = self._records()
            for key in wanted:
                if key not in found and key in records:
                    found[key] = records[key]
        return found

    def _records(self) -> dict[str, bytes]:
        if self._from_records is None:
            self._from_records = {}
            folder = run_dir(self.cache_dir, self.run_id)
            if folder.is_dir():
                for record in read_records(shard_paths(folder), resolve_refs=False):
                    # hits too: a run's records hold every answer it was given. A hit that
                    # refers to its body (response_ref) needs no resolving: that body is on
                    # an earlier line of the same shard, under the same key.
                    if record.get("status") == 200 and isinstance(record.get("response"), dict):
                        self._from_records[record["key"]] = orjson.dumps(record["response"])
        return self._from_records

    def close(self) -> None:
        """Close the index."""
        if self._index is not None:
            self._index.close()
            self._index = None
