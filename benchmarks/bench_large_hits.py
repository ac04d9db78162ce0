"""Concurrent cache hits of one large answer: /healthz latency meanwhile, and what the run's shard gains.

    .venv/bin/python benchmarks/bench_large_hits.py [--mb 8] [--hits 20] [--rounds 3]

Starts `gateway serve` (its own process) in front of a stand-in upstream whose
only answer is ``--mb`` megabytes of text, pays for it once (a miss), then fires
``--hits`` identical requests at once, ``--rounds`` times. A probe process
(tests/healthz_probe.py) asks /healthz every 10 ms throughout; the figures are
its worst and median latency during the hits, and the bytes the hits added to
the run's shard.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.processes import GatewayProcess, gateway_config  # noqa: E402

RUN = "large"


async def upstream(megabytes: float) -> tuple[web.AppRunner, int]:
    """A stand-in whose every completion is one ``megabytes``-long text."""
    body = orjson.dumps(
        {
            "id": "cmpl-large",
            "object": "text_completion",
            "created": 0,
            "model": "standin",
            "choices": [{"index": 0, "text": "x" * int(megabytes * 1e6), "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2_000_000, "total_tokens": 2_000_003},
        }
    )

    async def completions(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application(client_max_size=2**20)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", lambda _: web.json_response({"object": "list", "data": []}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def probes_between(log: Path, start: float, end: float) -> list[float]:
    """Latencies (s) of the probes sent in [start, end]; an error counts as 30 s."""
    latencies = []
    for line in log.read_text().splitlines():
        sent, rest = line.split(" ", 1)
        if start <= float(sent) <= end:
            latencies.append(30.0 if rest.startswith("error") else float(rest.split()[0]))
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--hits", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runner, port = await upstream(args.mb)
    work = Path(tempfile.mkdtemp(prefix="bench-large-"))
    config = gateway_config(work / "gateway.yaml", f"http://127.0.0.1:{port}/v1", fsync="interval")
    gateway = GatewayProcess(config, work / "store", work / "gateway.log")
    gateway.start()
    probe_log = work / "probes.log"
    probe = None
    try:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            await gateway.wait_healthy(session)
            body = {"model": "standin", "prompt": "a long one", "max_tokens": 16, "temperature": 0}
            url = f"{gateway.url}/runs/{RUN}/v1/completions"

            async def ask() -> str:
                async with session.post(url, json=body) as response:
                    await response.read()
                    assert response.status == 200, response.status
                    return response.headers["X-Cache"]

            assert await ask() == "miss"
            shard = next((work / "store" / "runs" / RUN).glob("*.jsonl"))
            probe = subprocess.Popen(
                [sys.executable, "-m", "tests.healthz_probe", gateway.url, str(probe_log)], cwd=REPO
            )
            await asyncio.sleep(0.5)  # the probe's first answers: its baseline
            worst, medians, added = [], [], []
            for _ in range(args.rounds):
                size = shard.stat().st_size
                start = time.time()
                served = await asyncio.gather(*(ask() for _ in range(args.hits)))
                end = time.time()
                assert set(served) == {"hit"}, served
                latencies = probes_between(probe_log, start, end)
                worst.append(max(latencies, default=0.0))
                medians.append(statistics.median(latencies) if latencies else 0.0)
                added.append(shard.stat().st_size - size)
                await asyncio.sleep(0.3)
    finally:
        if probe is not None:
            probe.kill()
            probe.wait()
        gateway.stop()
        await runner.cleanup()
    print(f"{args.hits} concurrent hits of a {args.mb:g} MB answer, {args.rounds} rounds:")
    print("  /healthz worst latency during the hits: " + " / ".join(f"{w * 1000:.0f} ms" for w in worst))
    print("  /healthz median latency during the hits: " + " / ".join(f"{m * 1000:.1f} ms" for m in medians))
    print("  shard bytes added by the hits: " + " / ".join(f"{a / 1e6:.2f} MB" for a in added))


if __name__ == "__main__":
    asyncio.run(main())
