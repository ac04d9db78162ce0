"""Large answers: a hit neither re-parses its body nor copies it into a run that already holds it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from cache.records import RecordWriter, read_records, shard_paths
from cache.runs import run_dir
from scorer.store import ResponseReader
from tests.conftest import GatewayFactory, model_yaml
from tests.standin import StandIn

BODY = {"model": "standin", "prompt": "long", "max_tokens": 4, "temperature": 0}
ANSWER_BYTES = 400_000


def miss(key: str, text: str, served: str = "miss") -> tuple[dict[str, Any], bytes]:
    body = orjson.dumps({"choices": [{"text": text}]})
    return {"key": key, "served": served, "status": 200, "response": orjson.Fragment(body)}, body


async def test_a_hit_of_a_body_already_in_the_shard_refers_to_it_and_readers_resolve_it(
    tmp_path: Path,
) -> None:
    writer = RecordWriter(tmp_path, fsync="never")
    try:
        for record, body in [
            miss("k", "first"),
            miss("k", "first", "hit"),  # the same bytes: a reference
            miss("j", "other", "hit"),  # a body this shard never held: copied
            miss("k", "refreshed"),  # a refresh replaces what the key refers to
            miss("k", "first", "hit"),  # another process's older body: copied, not referred to
            miss("k", "first", "coalesced"),
        ]:
            await writer.append("r", record, body=body)
    finally:
        writer.close()
    (shard,) = shard_paths(run_dir(tmp_path, "r"))
    raw = [orjson.loads(line) for line in shard.read_bytes().splitlines()]
    assert [r.get("response_ref") for r in raw] == [None, "k", None, None, None, "k"]
    assert all(r["response"] is None for r in raw if r.get("response_ref"))
    texts = [r["response"]["choices"][0]["text"] for r in read_records([shard], resolve_refs=True)]
    assert texts == ["first", "first", "other", "refreshed", "first", "first"]


async def test_a_hit_after_its_shard_was_closed_copies_the_body_it_no_longer_vouches_for(
    tmp_path: Path,
) -> None:
    writer = RecordWriter(tmp_path, fsync="never", max_open=1)
    try:
        first, body = miss("k", "a")
        await writer.append("r", first, body=body)
        await writer.append("other", *miss("x", "x"))  # closes r's shard: r's bodies are forgotten
        hit, body = miss("k", "a", "hit")
        await writer.append("r", hit, body=body)
    finally:
        writer.close()
    records = list(read_records(shard_paths(run_dir(tmp_path, "r"))))
    assert [r.get("response_ref") for r in records] == [None, None]  # copied after a reopen: still correct


async def test_hits_of_a_large_answer_neither_reparse_it_nor_copy_it_into_the_run(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gateway = await make_gateway(model_yaml(standin.api_base, name="standin"))
    standin.padding = "x" * ANSWER_BYTES
    first = await gateway.post("/runs/big/v1/completions", BODY)
    answer = await first.read()
    assert first.headers["X-Cache"] == "miss" and len(answer) > ANSWER_BYTES
    (shard,) = shard_paths(run_dir(gateway.cache_dir, "big"))
    size = shard.stat().st_size

    parsed_large: list[int] = []
    real_loads = orjson.loads

    def counting_loads(data: Any) -> Any:
        if len(data) >= ANSWER_BYTES:
            parsed_large.append(len(data))
        return real_loads(data)

    monkeypatch.setattr(orjson, "loads", counting_loads)
    hits = await asyncio.gather(*(gateway.post("/runs/big/v1/completions", BODY) for _ in range(12)))
    monkeypatch.undo()
    assert [h.headers["X-Cache"] for h in hits] == ["hit"] * 12
    assert all([await h.read() == answer for h in hits])
    assert parsed_large == []  # usage came from memory, not from parsing 400 kB again
    assert shard.stat().st_size - size < ANSWER_BYTES // 10  # twelve small records, no body copied

    records = list(read_records([shard], resolve_refs=True))  # the run folder stands on its own
    assert [r["served"] for r in records] == ["miss"] + ["hit"] * 12
    assert all(orjson.dumps(r["response"]) == answer for r in records)
    assert all(r["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7} for r in records)
    alone = tmp_path / "alone"  # the run folder copied where there is no index: the scorer reads records only
    shutil.copytree(run_dir(gateway.cache_dir, "big"), run_dir(alone, "big"))
    reader = ResponseReader(alone, "big")
    try:
        assert reader.get_raw_many([records[0]["key"]]) == {records[0]["key"]: answer}
    finally:
        reader.close()
