"""kill -9 under load, again and again: nothing a client received is lost, nothing is paid for twice."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from cache.runs import run_dir
from tests.processes import GatewayProcess, StandInProcess, gateway_config
from tests.records_check import assert_acknowledged_are_recorded, read_run

RUN = "crash"
KILLS = 20
WORKERS = 16
WORKLOAD = [f"w-{i}" for i in range(2000)]
UNSENT = 200  # the workload's tail is only sent at the end: upstream must be asked for it


def request_of(prompt: str) -> tuple[str, dict]:
    """Half the workload is chat, half text completions."""
    if int(prompt.split("-")[1]) % 2:
        return "/chat/completions", {
            "model": "standin",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 8,
            "temperature": 0,
        }
    return "/completions", {"model": "standin", "prompt": prompt, "max_tokens": 8, "temperature": 0}


def standin_name(prompt: str) -> str:
    """How the stand-in counts ``prompt`` (see tests/standin_process.py)."""
    _, body = request_of(prompt)
    return str(body["prompt"] if "prompt" in body else body["messages"])


@dataclass
class Acknowledged:
    """What clients received with status 200: key → body, and prompt → key."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def add(self, prompt: str, key: str, body: bytes) -> None:
        previous = self.bodies.get(key)
        assert previous is None or previous == body, f"{prompt}: two different answers acknowledged"
        self.bodies[key] = body
        self.keys[prompt] = key


async def send(session: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int, str, str, bytes]:
    """One request of the workload: status, X-Cache, X-Record-Key and the whole body."""
    path, body = request_of(prompt)
    async with session.post(f"{url}/runs/{RUN}/v1{path}", json=body) as response:
        data = await response.read()
        return (
            response.status,
            response.headers.get("X-Cache", ""),
            response.headers.get("X-Record-Key", ""),
            data,
        )


@pytest.fixture
async def standin() -> AsyncIterator[StandInProcess]:
    server = StandInProcess()
    yield server
    server.stop()


async def drive_until_killed(
    gateway: GatewayProcess,
    session: aiohttp.ClientSession,
    rng: random.Random,
    fresh: list[str],
    acknowledged: Acknowledged,
) -> int:
    """Concurrent clients on the workload until a kill -9 at a random moment; returns requests cut off."""
    recent: list[str] = []
    cut_off = 0
    killed = False

    def next_prompt() -> str:
        # Mostly new prompts (misses), some just-sent ones (coalesced or hits).
        if fresh and (not recent or rng.random() < 0.75):
            prompt = fresh.pop()
            recent.append(prompt)
            del recent[:-32]
            return prompt
        return rng.choice(recent or WORKLOAD[:-UNSENT])

    async def client() -> None:
        nonlocal cut_off
        while not killed:
            prompt = next_prompt()
            try:
                status, _, key, body = await send(session, gateway.url, prompt)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                cut_off += 1
                continue
            assert status == 200, f"{prompt}: {status} {body[:300]!r}"
            acknowledged.add(prompt, key, body)

    clients = [asyncio.ensure_future(client()) for _ in range(WORKERS)]
    await asyncio.sleep(rng.uniform(0.05, 0.6))  # the random moment of the crash
    gateway.kill9()
    killed = True
    await asyncio.gather(*clients)
    return cut_off


async def assert_answered_from_cache(
    gateway: GatewayProcess, session: aiohttp.ClientSession, prompts: dict[str, str], bodies: dict[str, bytes]
) -> None:
    """Each prompt → key given is a cache hit with the very body a client received before."""
    limit = asyncio.Semaphore(WORKERS)

    async def check(prompt: str, key: str) -> None:
        async with limit:
            status, served, got_key, body = await send(session, gateway.url, prompt)
        assert (status, served, got_key) == (200, "hit", key), f"{prompt}: {status} {served} {body[:200]!r}"
        assert body == bodies[key], f"{prompt}: the cache answers with a different body"

    await asyncio.gather(*(check(p, k) for p, k in prompts.items()))


async def test_kill_9_under_load_loses_no_acknowledged_response_and_pays_only_for_the_unanswered(
    standin: StandInProcess, tmp_path: Path
) -> None:
    rng = random.Random(6)
    config = gateway_config(tmp_path / "gateway.yaml", standin.api_base, fsync="never")
    gateway = GatewayProcess(config, tmp_path / "store", tmp_path / "gateway.log")
    records_dir = run_dir(gateway.cache_dir, RUN)
    fresh = WORKLOAD[:-UNSENT]
    rng.shuffle(fresh)
    acknowledged = Acknowledged()
    checked: set[str] = set()
    cut_off = torn = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        for _ in range(KILLS):
            gateway.start()
            await gateway.wait_healthy(session)
            records = read_run(records_dir)[0] if records_dir.exists() else []
            assert_acknowledged_are_recorded(acknowledged.bodies, records)
            new = {p: k for p, k in acknowledged.keys.items() if p not in checked}
            await assert_answered_from_cache(gateway, session, new, acknowledged.bodies)
            checked.update(new)
            cut_off += await drive_until_killed(gateway, session, rng, fresh, acknowledged)

        gateway.start()
        try:
            await gateway.wait_healthy(session)
            records, report = read_run(records_dir)
            torn = len(report.torn)
            assert_acknowledged_are_recorded(acknowledged.bodies, records)
            await assert_answered_from_cache(gateway, session, acknowledged.keys, acknowledged.bodies)

            before = (await standin.stats(session))["calls"]
            limit = asyncio.Semaphore(WORKERS)

            async def resend(prompt: str) -> None:
                async with limit:
                    status, _, _, body = await send(session, gateway.url, prompt)
                assert status == 200, body[:300]

            await asyncio.gather(*(resend(p) for p in WORKLOAD))
            after = (await standin.stats(session))["calls"]
        finally:
            gateway.stop()

    called = {p for p in WORKLOAD if after.get(standin_name(p), 0) > before.get(standin_name(p), 0)}
    never_sent = {*fresh, *WORKLOAD[-UNSENT:]}
    assert never_sent <= called, "re-sending did not reach the upstream for prompts never sent before"
    paid_twice = called & set(acknowledged.keys)
    assert not paid_twice, (
        f"{len(paid_twice)} answered prompts went upstream again, e.g. {sorted(paid_twice)[:5]}"
    )
    twice_now = [p for p in called if after[standin_name(p)] - before.get(standin_name(p), 0) > 1]
    assert not twice_now, f"re-sending asked the upstream more than once for {twice_now[:5]}"
    assert cut_off > 0, "no kill landed while requests were in flight"
    print(
        f"\n{KILLS} kills: {len(acknowledged.bodies)} responses acknowledged, {cut_off} requests cut off, "
        f"{torn} torn tails; re-sending {len(WORKLOAD)} ({len(never_sent)} never sent) called upstream "
        f"{len(called)} times"
    )
