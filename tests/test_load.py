"""5,000 open connections on a slow upstream: /healthz answers, memory stays bounded, the excess gets 429.

The figures this prints (healthz latency, peak RSS) are quoted in benchmarks/README.md ("Load").
"""

from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import IN_CI
from tests.processes import REPO, GatewayProcess, StandInProcess, gateway_config, raise_fd_limit, until

CONNECTIONS = 5000
MAX_CONCURRENCY = 8
MAX_QUEUE = 64
PEAK_RSS_LIMIT_MIB = 500


@pytest.fixture
async def standin() -> AsyncIterator[StandInProcess]:
    server = StandInProcess(max_hold_s=120)
    yield server
    server.stop()


def completion_request(i: int) -> bytes:
    """A raw HTTP/1.1 request the stand-in will hold (``hold:``) until released."""
    body = orjson.dumps({"model": "standin", "prompt": f"hold: question {i}", "max_tokens": 4})
    head = (
        "POST /runs/load/v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased) and body of one HTTP/1.1 response with a Content-Length."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if line)}
    return status, headers, await reader.readexactly(int(headers["content-length"]))


class HealthProbe:
    """tests/healthz_probe.py in its own process; its latencies split by the phases the test marks."""

    def __init__(self, url: str, log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.healthz_probe", url, str(log)], cwd=REPO
        )
        self.phases: list[tuple[float, str]] = []

    def mark(self, phase: str) -> None:
        """From now on, probes belong to ``phase``."""
        self.phases.append((time.time(), phase))

    def answers(self) -> list[tuple[float, str]]:
        """(time sent, latency or error) of every probe so far."""
        text = self.log.read_text() if self.log.exists() else ""
        whole = text.split("\n")[:-1]  # the last piece may be a line still being written
        return [(float(t), rest) for t, rest in (line.split(" ", 1) for line in whole)]

    async def count(self, phase: str) -> int:
        """Probes answered since ``phase`` began."""
        since = next(t for t, p in self.phases if p == phase)
        return sum(1 for t, _ in self.answers() if t >= since)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def by_phase(self) -> dict[str, list[float]]:
        """Latencies (seconds) per phase; fails on any probe that got no 200."""
        result: dict[str, list[float]] = {p: [] for _, p in self.phases}
        for sent, rest in self.answers():
            assert not rest.startswith("error") and rest.endswith(" 200"), f"/healthz failed: {rest}"
            phase = [p for t, p in self.phases if t <= sent]
            if phase:
                result[phase[-1]].append(float(rest.split()[0]))
        return result

    def summary(self) -> str:
        parts = []
        for phase, values in self.by_phase().items():
            ms = sorted(v * 1000 for v in values)
            if ms:
                parts.append(
                    f"{phase}: n={len(ms)} p50={statistics.median(ms):.1f} ms "
                    f"p99={ms[math.ceil(0.99 * len(ms)) - 1]:.1f} ms max={ms[-1]:.1f} ms"
                )
        return "; ".join(parts)


async def test_5000_open_connections_get_healthz_answers_bounded_memory_and_429_for_the_excess(
    standin: StandInProcess, tmp_path: Path
) -> None:
    limit = raise_fd_limit()
    if limit < CONNECTIONS + 1000:
        message = f"the open-files hard limit ({limit}) is below {CONNECTIONS + 1000}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    config = gateway_config(
        tmp_path / "gateway.yaml",
        standin.api_base,
        max_concurrency=MAX_CONCURRENCY,
        max_queue=MAX_QUEUE,
        timeout_s=120,
    )
    gateway = GatewayProcess(config, tmp_path / "store", tmp_path / "gateway.log")
    admitted = MAX_CONCURRENCY + MAX_QUEUE
    statuses: Counter[int] = Counter()
    rejected_well = 0
    writers: list[asyncio.StreamWriter] = []
    probe: HealthProbe | None = None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        gateway.start()
        try:
            await gateway.wait_healthy(session)
            idle_rss = gateway.status("VmRSS")
            fds_before = gateway.open_fds()
            probe = HealthProbe(gateway.url, tmp_path / "healthz.log")
            probe.mark("idle")

            async def baseline() -> bool:
                return await probe.count("idle") >= 20

            await until(baseline, 30, "20 healthz answers before the load")

            probe.mark("opening 5000 connections")
            started = time.monotonic()
            cpu = [gateway.cpu_seconds()]
            opening = asyncio.Semaphore(100)  # under the listen backlog: no SYN retries to wait out

            async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                async with opening:
                    return await asyncio.open_connection("127.0.0.1", gateway.port)

            streams = await asyncio.gather(*(connect() for _ in range(CONNECTIONS)))
            writers = [w for _, w in streams]

            async def all_accepted() -> bool:
                return gateway.open_fds() - fds_before >= CONNECTIONS

            await until(all_accepted, 60, f"the gateway to hold {CONNECTIONS} connections", every_s=0.1)
            connected_s = time.monotonic() - started
            cpu.append(gateway.cpu_seconds())

            probe.mark("5000 requests arriving")

            async def exchange(i: int) -> None:
                nonlocal rejected_well
                reader, writer = streams[i]
                writer.write(completion_request(i))
                status, headers, body = await read_response(reader)
                statuses[status] += 1
                if status == 429:
                    code = orjson.loads(body)["error"]["code"]
                    rejected_well += code == "queue_full" and int(headers.get("retry-after", "0")) >= 1

            exchanges = [asyncio.ensure_future(exchange(i)) for i in range(CONNECTIONS)]

            async def excess_rejected() -> bool:
                failed = [e for e in exchanges if e.done() and e.exception()]
                assert not failed, repr(failed[0].exception())
                return statuses[429] >= CONNECTIONS - admitted

            await until(excess_rejected, 120, f"{CONNECTIONS - admitted} rejections", every_s=0.1)
            rejected_s = time.monotonic() - started - connected_s
            cpu.append(gateway.cpu_seconds())

            async def upstream_full() -> bool:
                return (await standin.stats(session))["in_flight"] == MAX_CONCURRENCY

            await until(upstream_full, 30, f"{MAX_CONCURRENCY} calls in flight upstream")
            held = f"{CONNECTIONS} open, {admitted} admitted and held"
            probe.mark(held)

            async def probed() -> bool:
                return await probe.count(held) >= 50

            await until(probed, 60, "50 healthz answers while every connection is open")
            assert statuses == {429: CONNECTIONS - admitted}, statuses
            assert gateway.open_fds() - fds_before >= CONNECTIONS, "connections were dropped"
            held_rss = gateway.status("VmRSS")

            probe.mark("draining")
            await standin.release(session)
            await asyncio.wait_for(asyncio.gather(*exchanges), 120)
            peak_kib = gateway.status("VmHWM")
            stats = await standin.stats(session)
        finally:
            if probe is not None:
                probe.stop()
            for writer in writers:
                writer.close()
            gateway.stop()

    assert statuses == {429: CONNECTIONS - admitted, 200: admitted}, statuses
    assert rejected_well == CONNECTIONS - admitted, "every 429 says queue_full and carries Retry-After"
    assert stats["max_in_flight"] <= MAX_CONCURRENCY and stats["total"] == admitted, stats
    latencies = probe.by_phase()  # fails if any probe went unanswered
    assert all(latencies.values()), f"a phase without a single /healthz answer: {probe.summary()}"
    peak_mib = peak_kib / 1024
    print(
        f"\n{CONNECTIONS} connections open in {connected_s:.1f} s ({cpu[1] - cpu[0]:.2f} s gateway CPU); "
        f"{statuses[429]} rejected with 429 in {rejected_s:.1f} s ({cpu[2] - cpu[1]:.2f} s gateway CPU); "
        f"gateway RSS idle {idle_rss / 1024:.0f} MiB, holding {held_rss / 1024:.0f} MiB, "
        f"peak (VmHWM) {peak_mib:.0f} MiB\nhealthz latency: {probe.summary()}"
    )
    assert peak_mib < PEAK_RSS_LIMIT_MIB, f"peak RSS {peak_mib:.0f} MiB"
