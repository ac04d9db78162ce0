"""Two `gateway serve` processes on one cache dir under load: whole lines, shared keys, one rebuild."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from cache.index import ResponseIndex
from cache.records import shard_paths
from cache.runs import run_dir
from tests.processes import REPO, GatewayProcess, StandInProcess, gateway_config
from tests.records_check import answered_keys, assert_acknowledged_are_recorded, read_run

RUN = "shared"
CLIENTS = 16
# Long prompts make long lines: a writer that split a line would show it.
PAD = "x" * 3000


@pytest.fixture
async def standin() -> AsyncIterator[StandInProcess]:
    server = StandInProcess()
    yield server
    server.stop()


async def post(session: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int, str, str, bytes]:
    body = {"model": "standin", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    async with session.post(f"{url}/runs/{RUN}/v1/completions", json=body) as response:
        data = await response.read()
        headers = response.headers
        return response.status, headers.get("X-Cache", ""), headers.get("X-Record-Key", ""), data


async def drive(
    session: aiohttp.ClientSession, url: str, prompts: list[str]
) -> tuple[dict[str, str], dict[str, set[bytes]]]:
    """Send ``prompts`` from concurrent clients; prompt → key and key → bodies received."""
    keys: dict[str, str] = {}
    bodies: dict[str, set[bytes]] = {}
    queue = list(prompts)

    async def client() -> None:
        while queue:
            prompt = queue.pop()
            status, _, key, body = await post(session, url, prompt)
            assert status == 200, f"{url} {prompt[:20]}: {status} {body[:300]!r}"
            keys[prompt] = key
            bodies.setdefault(key, set()).add(body)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return keys, bodies


async def test_two_gateways_on_one_cache_dir_write_whole_lines_share_keys_and_rebuild_the_union(
    standin: StandInProcess, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path / "gateway.yaml", standin.api_base, fsync="interval")
    store = tmp_path / "store"
    a = GatewayProcess(config, store, tmp_path / "a.log")
    b = GatewayProcess(config, store, tmp_path / "b.log")
    only_a = [f"a-{i}-{PAD}" for i in range(300)]
    only_b = [f"b-{i}-{PAD}" for i in range(300)]
    both = [f"s-{i}-{PAD}" for i in range(300)]  # sent to both at once: misses, hits or coalesced
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        a.start()
        b.start()
        try:
            await asyncio.gather(a.wait_healthy(session), b.wait_healthy(session))
            (keys_a, bodies_a), (keys_b, bodies_b) = await asyncio.gather(
                drive(session, a.url, only_a + both), drive(session, b.url, only_b + both[::-1])
            )
            bodies = {k: bodies_a.get(k, set()) | bodies_b.get(k, set()) for k in {*bodies_a, *bodies_b}}

            async def cross_check(url: str, keys: dict[str, str]) -> None:
                for prompt, key in keys.items():
                    status, served, got, body = await post(session, url, prompt)
                    assert (status, served, got) == (200, "hit", key), f"{url}: {prompt[:20]} {served}"
                    assert body in bodies[key], f"{url}: {prompt[:20]} answered with a body nobody got"

            # What A answered is a hit on B, and the other way round.
            await asyncio.gather(
                *(cross_check(b.url, dict(list(keys_a.items())[i::8])) for i in range(8)),
                *(cross_check(a.url, dict(list(keys_b.items())[i::8])) for i in range(8)),
            )
        finally:
            a.stop()
            b.stop()

    records_dir = run_dir(store, RUN)
    shards = shard_paths(records_dir)
    assert len(shards) == 2, f"one shard per process, got {[p.name for p in shards]}"
    records, report = read_run(records_dir)
    assert not report.torn, f"broken lines after a clean stop: {report.describe()}"
    for shard in shards:
        lines = shard.read_bytes().split(b"\n")
        assert lines[-1] == b"", f"{shard.name} does not end with a whole line"
        assert all(orjson.loads(line)["run_id"] == RUN for line in lines[:-1])
    expected = len(only_a) + len(only_b) + 2 * len(both) + len(keys_a) + len(keys_b)
    assert len(records) == expected, f"{len(records)} records for {expected} requests"
    acknowledged = {key: next(iter(got)) for key, got in bodies.items()}
    assert_acknowledged_are_recorded(acknowledged, records)

    shutil.rmtree(store / "index")  # the union must come from the JSONL alone
    rebuilt = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "cache", "rebuild", "--cache-dir", str(store)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "none torn" in rebuilt.stdout, rebuilt.stdout
    index = ResponseIndex(store)
    try:
        assert len(index) == len(bodies), f"{len(index)} index entries for {len(bodies)} keys answered"
        recorded = answered_keys(records)
        for key in bodies:
            stored = index.get(key)
            assert stored is not None, f"{key} is missing from the rebuilt index"
            assert orjson.loads(stored) in recorded[key]
    finally:
        index.close()
    upstream = (await _stats(standin))["total"]
    assert len(only_a) + len(only_b) + len(both) <= upstream <= len(only_a) + len(only_b) + 2 * len(both)


async def _stats(standin: StandInProcess) -> dict:
    async with aiohttp.ClientSession() as session:
        return await standin.stats(session)
