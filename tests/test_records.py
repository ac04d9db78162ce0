"""Run records and the index: what is durable when, torn lines, and rebuilding the index from JSONL alone."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import orjson
from click.testing import CliRunner

import cache.index
from cache.index import ResponseIndex, rebuild_index
from cache.keys import request_key
from cache.records import ReadReport, RecordWriter, read_records, shard_paths
from cache.runs import run_dir
from gateway.cli import main as gateway_cli
from tests.conftest import GatewayFactory, model_yaml
from tests.upstreams import CountingRelay


def record(key: str, served: str = "miss", status: int = 200, text: str = "ok") -> dict:
    return {"key": key, "served": served, "status": status, "response": {"text": text}}


async def test_append_returns_after_the_line_is_in_the_shard(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path, fsync="never")
    try:
        await asyncio.gather(*(writer.append("r", record(f"k{i}")) for i in range(200)))
        lines = writer.shard_path("r").read_bytes().splitlines()
        assert [orjson.loads(line)["key"] for line in lines] == [f"k{i}" for i in range(200)]
    finally:
        writer.close()


def test_acknowledged_records_survive_kill_9_of_the_writer(tmp_path: Path) -> None:
    # A child appends and prints each key once append() returned; we kill -9 it mid-stream.
    child = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from cache.records import RecordWriter
        async def main():
            writer = RecordWriter(Path({str(tmp_path)!r}), fsync="never")
            i = 0
            while True:
                await writer.append("r", {{"key": f"k{{i}}", "pad": "x" * 500}})
                print(f"k{{i}}", flush=True)
                i += 1
        asyncio.run(main())
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=os.getcwd())
    assert process.stdout is not None
    acknowledged = [process.stdout.readline().decode().strip() for _ in range(300)]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    (shard,) = shard_paths(run_dir(tmp_path, "r"))
    kept = {r["key"] for r in read_records([shard])}
    assert set(acknowledged) <= kept


def test_a_torn_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    shard = run_dir(tmp_path, "r") / "1-host-1.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(
        orjson.dumps(record("a")) + b"\n" + orjson.dumps(record("b")) + b"\n" + b'{"key": "c", "ser'
    )
    report = ReadReport()
    keys = [r["key"] for r in read_records([shard], report)]
    assert keys == ["a", "b"]
    assert report.torn == [(shard, 3)]
    assert "skipped 1 torn line" in report.describe()


def test_rebuild_indexes_fresh_successes_only_newest_wins(tmp_path: Path) -> None:
    older = run_dir(tmp_path, "r1") / "100-host-1.jsonl"
    newer = run_dir(tmp_path, "r2") / "200-host-2.jsonl"
    older.parent.mkdir(parents=True)
    newer.parent.mkdir(parents=True)
    lines = [
        record("k1", text="old"),
        record("k2", status=500),
        record("k3", served="hit"),
        {**record("k4"), "cacheable": False},
    ]
    older.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    newer.write_bytes(orjson.dumps(record("k1", text="new")) + b"\n")
    assert rebuild_index(tmp_path) == 1  # one entry, k1: with no times, the later shard wins
    index = ResponseIndex(tmp_path)
    try:
        assert orjson.loads(index.get("k1") or b"null") == {"text": "new"}
        assert [index.get(k) for k in ("k2", "k3", "k4")] == [None, None, None]
    finally:
        index.close()


def test_rebuild_keeps_an_older_process_refresh_over_a_newer_process_stale_miss(tmp_path: Path) -> None:
    # Process 1 started first, process 2 later and answered k from a stale upstream
    # at t=300; then process 1 took a no-cache refresh of k at t=500.
    older_process = run_dir(tmp_path, "r") / "100-host-1.jsonl"
    newer_process = run_dir(tmp_path, "r") / "200-host-2.jsonl"
    older_process.parent.mkdir(parents=True)
    lines_1 = [
        {**record("k", text="first"), "ts_end": 150.0},
        {**record("k", text="refreshed"), "ts_end": 500.0},
    ]
    older_process.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines_1))
    lines_2 = [{**record("k", text="stale"), "ts_end": 300.0}, {**record("t", text="tie"), "ts_end": 9.0}]
    newer_process.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines_2))
    with older_process.open("ab") as shard:  # same time as process 2's answer: the later shard wins the tie
        shard.write(orjson.dumps({**record("t", text="lost tie"), "ts_end": 9.0}) + b"\n")
    report = ReadReport()
    assert rebuild_index(tmp_path, report) == 2
    assert report.lines == 5  # each line counted once, though the shards are read twice
    index = ResponseIndex(tmp_path)
    try:
        assert orjson.loads(index.get("k") or b"null") == {"text": "refreshed"}
        assert orjson.loads(index.get("t") or b"null") == {"text": "tie"}
    finally:
        index.close()


async def test_gateway_cache_rebuild_restores_every_entry_byte_for_byte(
    relay: CountingRelay, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    gateway = await make_gateway(model_yaml(relay.url + "/v1"), cache_dir=store)
    prompts = [f"Count to {n}:" for n in range(4)]
    bodies = {}
    for prompt in prompts:
        body = {"model": "smollm2", "prompt": prompt, "max_tokens": 3, "temperature": 0}
        response = await gateway.post("/runs/rebuild/v1/completions", body)
        bodies[response.headers["X-Record-Key"]] = await response.read()
    chat = await gateway.post(
        "/runs/rebuild/v1/chat/completions",
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3,
            "stream": True,
        },
    )
    await chat.read()
    index = ResponseIndex(store)
    before = {k: index.get(k) for k in bodies}
    index.clear()
    index.close()

    result = CliRunner().invoke(gateway_cli, ["cache", "rebuild", "--cache-dir", str(store)])
    assert result.exit_code == 0, result.output
    assert "5 entries" in result.output

    index = ResponseIndex(store)
    try:
        assert {k: index.get(k) for k in bodies} == before == bodies
        assert len(index) == 5
    finally:
        index.close()
    calls = relay.total
    for prompt in prompts:  # served from the rebuilt index: nothing more upstream
        body = {"model": "smollm2", "prompt": prompt, "max_tokens": 3, "temperature": 0}
        assert (await gateway.post("/runs/rebuild/v1/completions", body)).headers["X-Cache"] == "hit"
    assert relay.total == calls


def test_keys_ignore_delivery_fields_and_integral_floats() -> None:
    base = {"model": "a", "prompt": "p", "temperature": 0, "max_tokens": 5}
    same = {**base, "model": "b", "stream": True, "user": "u", "temperature": 0.0}
    assert request_key("/v1/completions", "m", base) == request_key("/v1/completions", "m", same)
    assert request_key("/v1/completions", "m", base) != request_key("/v1/completions", "other", base)
    assert request_key("/v1/completions", "m", base) != request_key("/v1/chat/completions", "m", base)
    assert request_key("/v1/completions", "m", base) != request_key(
        "/v1/completions", "m", {**base, "seed": 1}
    )
    assert request_key("/v1/completions", "m", base) != request_key("/v1/completions", "m", base, salt="s")


async def test_the_memory_tier_holds_no_more_real_memory_than_its_budget(tmp_path: Path) -> None:
    budget = 256 * 1024
    index = ResponseIndex(tmp_path, memory_bytes=budget)
    try:
        tracemalloc.start()
        try:
            for i in range(4000):  # small answers, as orjson writes them: in 4 KiB buffers
                await index.aset(f"k{i}", orjson.dumps({"text": f"answer {i}"}))
            gc.collect()
            # Only what the index module allocated and still holds: the rest of a shared event
            # loop (other tests' leftovers) allocates too, and must not count against the tier.
            mine = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, cache.index.__file__)])
            held = sum(stat.size for stat in mine.statistics("filename"))
        finally:
            tracemalloc.stop()
        assert index.memory_tier_bytes <= budget
        assert held <= budget * 1.5, f"the tier counts {index.memory_tier_bytes} bytes but holds {held}"
        assert index.recent("k3999") == orjson.dumps({"text": "answer 3999"})
    finally:
        index.close()


async def test_lookups_and_writes_of_one_loop_turn_reach_the_disk_in_one_trip(tmp_path: Path) -> None:
    index = ResponseIndex(tmp_path)
    threads: list[int] = []  # one entry per trip of the index thread, gets and sets alike
    lane = index._lane
    get_batch, set_batch = lane._get_batch, lane._set_batch
    lane._get_batch = lambda keys: (threads.append(len(keys)), get_batch(keys))[1]
    lane._set_batch = lambda items: (threads.append(-len(items)), set_batch(items))[1]
    try:
        index.set("old", b'{"text": "kept"}')  # on disk only, not in the memory tier
        writes = [index.aset(f"new{i}", b'{"text": "new"}') for i in range(8)]
        found = await asyncio.gather(index.aget("old"), index.aget("missing"), *writes)
        # The eight writes in one transaction, then both lookups, in one trip: not one per request.
        assert threads == [-8, 2]
        assert found[:2] == [b'{"text": "kept"}', None]
        assert index.get("new7") == b'{"text": "new"}'
    finally:
        index.close()
