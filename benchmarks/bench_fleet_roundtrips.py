"""Redis round trips per miss, per first hit on another replica and per hot hit (INFO commandstats).

    .venv/bin/python benchmarks/bench_fleet_roundtrips.py

Two gateway processes on the Redis backend in front of the counting stand-in, a redis-server of its own.
"""

import asyncio
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, ".")
from tests.processes import GatewayProcess, StandInProcess, gateway_config
from tests.redis_server import RedisServer

# What INFO commandstats counts but no gateway sent: this benchmark's own bookkeeping.
OWN = ("cmdstat_info", "cmdstat_config|resetstat", "cmdstat_ping")
# What a gateway sends itself; every other command counted ran inside one of its scripts (an EVAL), and
# a pipeline or a script is one round trip. (SADD also runs inside TAKE_SAMPLE, for sampled requests.)
SENT = ("cmdstat_mget", "cmdstat_set", "cmdstat_mset", "cmdstat_eval", "cmdstat_evalsha", "cmdstat_sadd")


def command_calls(redis: RedisServer) -> dict[str, int]:
    """Calls so far per command (``cmdstat_mget``: 12, ...) from ``INFO commandstats``."""
    out = redis.command("INFO", "commandstats").decode()
    return {
        line.split(":")[0]: int(line.split("calls=")[1].split(",")[0])
        for line in out.splitlines()
        if line.startswith("cmdstat_")
    }


def total(calls: dict[str, int]) -> int:
    """Commands the gateways made Redis run (those inside scripts included)."""
    return sum(v for k, v in calls.items() if k not in OWN)


def round_trips(calls: dict[str, int]) -> int:
    """Requests the gateways sent Redis: the commands not run inside a script."""
    return sum(v for k, v in calls.items() if k in SENT)


def since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two :func:`command_calls`."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


async def main():
    d = Path(tempfile.mkdtemp())
    r = RedisServer(d)
    r.start()
    s = StandInProcess()
    gws = []
    for n in range(2):
        c = gateway_config(d / f"g{n}.yaml", s.api_base)
        c.write_text(f"state: {{backend: redis, url: '{r.url}'}}\n" + c.read_text())
        g = GatewayProcess(c, d / f"st{n}", d / f"g{n}.log")
        g.start()
        gws.append(g)
    async with aiohttp.ClientSession() as sess:
        for g in gws:
            await g.wait_healthy(sess)

        async def ask(g, p):
            async with sess.post(
                g.url + "/v1/completions",
                json={"model": "standin", "prompt": p, "max_tokens": 4, "temperature": 0},
            ) as resp:
                await resp.read()
                return resp.headers["X-Cache"]

        def stats():
            return command_calls(r)

        r.command("CONFIG", "RESETSTAT")
        for i in range(100):
            assert await ask(gws[0], f"p{i}") == "miss"
        st = stats()
        print("misses (sequential), per request:", total(st) / 100, "round trips", round_trips(st) / 100, st)
        r.command("CONFIG", "RESETSTAT")
        for i in range(100):
            assert await ask(gws[1], f"p{i}") == "hit"
        st = stats()
        print(
            "hits on the other replica (first time), per request:",
            total(st) / 100,
            "round trips",
            round_trips(st) / 100,
            st,
        )
        r.command("CONFIG", "RESETSTAT")
        for i in range(100):
            assert await ask(gws[1], f"p{i}") == "hit"
        st = stats()
        print(
            "hot hits (memory tier), per request:", total(st) / 100, "round trips", round_trips(st) / 100, st
        )
    for g in gws:
        g.stop()
    s.stop()
    r.stop()


if __name__ == "__main__":
    asyncio.run(main())
