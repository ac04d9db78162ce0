"""`scorer run --batch`: a round's requests sent through the gateway's batch lane instead of one by one.

The first run of a round uploads its distinct requests (``custom_id`` = the
scorer's key) and creates one gateway batch per endpoint, keeps their ids in
``<run>/scorer/batches.json`` and stops with :class:`BatchPending`; the
gateway answers what its cache holds at once and sends only the misses on.
Running again reads the finished batches' output files and goes on to the
next round (or reports progress while they are still running). A crash or
an interrupt between the two costs nothing: the ids are kept, and every
answer is in the gateway's records and cache. Lines that failed are
forgotten with their batch, so the next run sends them again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from cache.atomic import write_atomic
from scorer.client import GatewayClient
from scorer.errors import GatewayFailure
from scorer.requests import Request

DONE = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchPending(Exception):
    """A round's batches are submitted or still running; the message says how far they are."""


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """``[#######-------]  40/120`` for people."""
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


class BatchLedger:
    """The run's batches by round, in ``<run>/scorer/batches.json``."""

    def __init__(self, scorer_folder: Path) -> None:
        self.path = scorer_folder / "batches.json"

    def read(self) -> dict[str, Any]:
        """Every round's batches: ``{round: {"gateway": url, "batches": {endpoint: id}}}``."""
        return orjson.loads(self.path.read_bytes()) if self.path.is_file() else {}  # type: ignore[no-any-return]

    def write(self, rounds: dict[str, Any]) -> None:
        """Keep ``rounds`` (atomically)."""
        write_atomic(self.path, orjson.dumps(rounds, option=orjson.OPT_INDENT_2))


class BatchGatewayClient(GatewayClient):
    """A :class:`GatewayClient` whose rounds go through ``/v1/batches``; tokenizer calls stay online."""

    def __init__(self, gateway: str, run_id: str, ledger: BatchLedger, concurrency: int = 8) -> None:
        super().__init__(gateway, run_id, concurrency)
        self.gateway = gateway
        self.ledger = ledger

    async def request_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One JSON call under the run's root; any failure is a :class:`GatewayFailure`."""
        try:
            async with self.session.request(method, self.root + path, **kwargs) as response:
                body = await response.read()
                if response.status != 200:
                    raise GatewayFailure(f"{method} {path}: {response.status} {body[:300]!r}")
                return orjson.loads(body)  # type: ignore[no-any-return]
        except aiohttp.ClientError as exc:
            raise GatewayFailure(f"{method} {path}: {exc}") from exc

    async def _content(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        async with self.session.get(f"{self.root}/v1/files/{file_id}/content") as response:
            if response.status != 200:
                raise GatewayFailure(f"GET file {file_id}: {response.status}")
            return [orjson.loads(line) for line in (await response.read()).splitlines()]

    async def _submit(self, endpoint: str, requests: list[Request], label: str | None) -> str:
        content = b"".join(
            orjson.dumps({"custom_id": r.key, "method": "POST", "url": endpoint, "body": r.body}) + b"\n"
            for r in requests
        )
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename="round.jsonl", content_type="application/jsonl")
        uploaded = await self.request_json("POST", "/v1/files", data=form)
        batch = {"input_file_id": uploaded["id"], "endpoint": endpoint, "completion_window": "24h"}
        # Sample 0 of a sampling request, as every online POST of the scorer pins it; the round's
        # label for every line, as X-Task labels an online request.
        headers = {"X-Sample-Index": "0", **({"X-Task": label} if label else {})}
        created = await self.request_json("POST", "/v1/batches", json=batch, headers=headers)
        return str(created["id"])

    async def send(
        self, requests: Iterable[Request], desc: str, label: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """The round's answers by key, once its batches are done; else :class:`BatchPending`.

        (``label`` is the ``X-Task`` of the round's batches: their lines are recorded under it.)
        """
        distinct = {r.key: r for r in requests}
        rounds = self.ledger.read()
        entry = rounds.get(desc)
        if entry is None:
            by_endpoint: dict[str, list[Request]] = {}
            for r in distinct.values():
                by_endpoint.setdefault(r.endpoint, []).append(r)
            ids = {endpoint: await self._submit(endpoint, rs, label) for endpoint, rs in by_endpoint.items()}
            rounds[desc] = {"gateway": self.gateway, "batches": ids}
            self.ledger.write(rounds)
            entry = rounds[desc]
        answers: dict[str, dict[str, Any]] = {}
        pending, failed = [], 0
        for batch_id in entry["batches"].values():
            batch = await self.request_json("GET", f"/v1/batches/{batch_id}")
            counts = batch.get("request_counts") or {}
            if batch["status"] not in DONE:
                done = counts.get("completed", 0) + counts.get("failed", 0)
                pending.append(f"{batch_id} {batch['status']} {progress_bar(done, counts.get('total', 0))}")
                continue
            for line in await self._content(batch.get("output_file_id")):
                self._check_key("batch", line["response"]["request_id"], line["custom_id"])
                answers[line["custom_id"]] = line["response"]["body"]
            failed += len(await self._content(batch.get("error_file_id")))
        if pending:
            raise BatchPending(f"{desc}: " + "; ".join(pending))
        missing = [key for key in distinct if key not in answers]
        if missing or failed:
            del rounds[desc]  # the next run sends the round again: its answered lines are cache hits
            self.ledger.write(rounds)
            raise GatewayFailure(
                f"{desc}: {max(len(missing), failed)} request(s) of the batch failed; run again to resend"
            )
        return {key: answers[key] for key in distinct}


async def batch_status(folder: Any) -> list[str]:
    """One line per batch of the run (a ``scorer.store.RunFolder``): round, id, status and a bar."""
    rounds = BatchLedger(folder.scorer).read()
    if not rounds:
        return [f"run {folder.run_id}: no batches pending (none submitted, or all read)"]
    lines = []
    for desc, entry in rounds.items():
        client = BatchGatewayClient(entry["gateway"], folder.run_id, BatchLedger(folder.scorer))
        async with client:
            for batch_id in entry["batches"].values():
                batch = await client.request_json("GET", f"/v1/batches/{batch_id}")
                counts = batch.get("request_counts") or {}
                done = counts.get("completed", 0) + counts.get("failed", 0)
                bar = progress_bar(done, counts.get("total", 0))
                lines.append(f"{desc}: {batch_id} {batch['status']} {bar}")
    return lines
