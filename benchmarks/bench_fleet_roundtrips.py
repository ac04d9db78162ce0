"""Redis round trips and commands per miss, per first hit on another replica and per hot hit.

    .venv/bin/python benchmarks/bench_fleet_roundtrips.py

Two gateway processes on the Redis backend in front of the counting stand-in, a redis-server of its own.
Round trips are the commands the gateways send (Redis's MONITOR feed, less the commands scripts run
inside Redis: those cost no trip); commands are every command Redis ran (INFO commandstats), scripts'
included. Each phase is 100 requests, one at a time, then (misses only) 100 at once.
"""

import asyncio
import socket
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import aiohttp

sys.path.insert(0, ".")
from tests.processes import GatewayProcess, StandInProcess, gateway_config
from tests.redis_server import RedisServer

REQUESTS = 100
# What INFO commandstats counts but no gateway sent: this benchmark's own bookkeeping.
OWN = ("cmdstat_info", "cmdstat_config|resetstat", "cmdstat_ping", "cmdstat_echo")
# What a gateway sends itself; every other command counted ran inside one of its scripts (an EVAL), and
# a script is one round trip. (SADD also runs inside TAKE_SAMPLE, for sampled requests; SET runs only
# inside scripts: the lease is taken by the claim script.) bench_fleet counts round trips this way, from
# INFO alone; this benchmark's MONITOR count below is the check.
SENT = ("cmdstat_mget", "cmdstat_mset", "cmdstat_eval", "cmdstat_evalsha", "cmdstat_sadd")


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


class Monitor:
    """Counts the commands clients send to Redis (MONITOR), apart from those run inside scripts."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.lines = self.sock.makefile("rb")
        assert self.lines.readline().startswith(b"+OK")
        self.sent: Counter[str] = Counter()
        self.marks: set[str] = set()
        self.seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.lines:
            where, _, command = line.partition(b"] ")
            name = command.split(b" ", 1)[0].strip(b'"\r\n').decode().lower()
            with self.seen:
                if name == "echo":
                    self.marks.add(command.split(b" ", 1)[1].strip(b'"\r\n').decode())
                    self.seen.notify_all()
                elif not where.endswith(b"lua") and name not in ("info", "config", "ping"):
                    self.sent[name] += 1

    def take(self, server: RedisServer, mark: str) -> Counter[str]:
        """What was sent since the last take (an ECHO marks the end, so none are still in flight)."""
        server.command("ECHO", mark)
        with self.seen:
            assert self.seen.wait_for(lambda: mark in self.marks, 10)
            sent, self.sent = self.sent, Counter()
        return sent


def commands_run(server: RedisServer) -> Counter[str]:
    """INFO commandstats since the last CONFIG RESETSTAT, less the benchmark's own."""
    calls = command_calls(server)
    return Counter({k.removeprefix("cmdstat_"): v for k, v in calls.items() if k not in OWN})


async def main() -> None:
    folder = Path(tempfile.mkdtemp())
    redis = RedisServer(folder)
    redis.start()
    standin = StandInProcess()
    gateways = []
    for n in range(2):
        config = gateway_config(folder / f"g{n}.yaml", standin.api_base)
        config.write_text(f"state: {{backend: redis, url: '{redis.url}'}}\n" + config.read_text())
        gateway = GatewayProcess(config, folder / f"st{n}", folder / f"g{n}.log")
        gateway.start()
        gateways.append(gateway)
    try:
        monitor = Monitor(redis.port)
        async with aiohttp.ClientSession() as session:
            for gateway in gateways:
                await gateway.wait_healthy(session)

            async def ask(gateway: GatewayProcess, prompt: str) -> str:
                body = {"model": "standin", "prompt": prompt, "max_tokens": 4, "temperature": 0}
                async with session.post(gateway.url + "/v1/completions", json=body) as response:
                    await response.read()
                    return response.headers["X-Cache"]

            for gateway in gateways:  # each loads its scripts once (a NOSCRIPT, then SCRIPT LOAD)
                await ask(gateway, "warm-up")
                await ask(gateways[1] if gateway is gateways[0] else gateways[0], "warm-up")

            async def phase(
                name: str, expect: str, gateway: GatewayProcess, prefix: str, together: bool
            ) -> None:
                monitor.take(redis, f"start-{prefix}-{together}")
                redis.command("CONFIG", "RESETSTAT")
                prompts = [f"{prefix}{i}" for i in range(REQUESTS)]
                if together:
                    served = await asyncio.gather(*(ask(gateway, p) for p in prompts))
                else:
                    served = [await ask(gateway, p) for p in prompts]
                assert set(served) == {expect}, Counter(served)
                trips, commands = monitor.take(redis, f"end-{prefix}-{together}"), commands_run(redis)
                print(
                    f"{name}: {trips.total() / REQUESTS:.2f} round trips, "
                    f"{commands.total() / REQUESTS:.2f} commands per request; "
                    f"sent {dict(trips)}; ran {dict(commands)}"
                )

            await phase("misses, one at a time", "miss", gateways[0], "p", together=False)
            await phase("first hits on the other replica", "hit", gateways[1], "p", together=False)
            await phase("hot hits (memory tier)", "hit", gateways[1], "p", together=False)
            await phase(f"misses, {REQUESTS} at once", "miss", gateways[0], "q", together=True)
    finally:
        for gateway in gateways:
            gateway.stop()
        standin.stop()
        redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
