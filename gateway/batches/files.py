"""The batch lane's files: what clients upload (``purpose: batch``) and the output and error files it writes.

Durability: a file's content and its metadata are each written to a
temporary file, fsynced and renamed into place, content first; a file is
listed once its metadata exists, so a crash leaves either a whole file or
none (a stray temporary at worst).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import orjson

from cache.atomic import write_atomic


def new_id(prefix: str) -> str:
    """A fresh id in OpenAI's style (``file-…``, ``batch_…``)."""
    return prefix + secrets.token_hex(12)


class FileStore:
    """Files under ``<cache_dir>/batches/files``: ``<id>.jsonl`` and its ``<id>.json`` metadata."""

    def __init__(self, cache_dir: Path) -> None:
        self.folder = cache_dir / "batches" / "files"

    def _valid(self, file_id: str) -> bool:
        return file_id.startswith("file-") and file_id[5:].isalnum()

    def create(self, content: bytes, filename: str, purpose: str, run_id: str) -> dict[str, Any]:
        """Keep ``content``; its file object (as OpenAI's ``FileObject``)."""
        file_id = new_id("file-")
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "run_id": run_id,
        }
        write_atomic(self.folder / f"{file_id}.jsonl", content)
        write_atomic(self.folder / f"{file_id}.json", orjson.dumps(meta))
        return meta

    def get(self, file_id: str) -> dict[str, Any] | None:
        """The file object of ``file_id``, or None when there is none."""
        if not self._valid(file_id):
            return None
        try:
            meta: dict[str, Any] = orjson.loads((self.folder / f"{file_id}.json").read_bytes())
        except FileNotFoundError:
            return None
        return meta

    def content(self, file_id: str) -> bytes:
        """The bytes of ``file_id`` (which :meth:`get` has found)."""
        return (self.folder / f"{file_id}.jsonl").read_bytes()

    def list(self, run_id: str) -> list[dict[str, Any]]:
        """The file objects of ``run_id``, newest first."""
        if not self.folder.is_dir():
            return []
        metas = [orjson.loads(p.read_bytes()) for p in self.folder.glob("file-*.json")]
        return sorted((m for m in metas if m.get("run_id") == run_id), key=lambda m: -m["created_at"])
