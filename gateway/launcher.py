"""Processes the gateway starts itself, waits for, and stops with itself: a model's ``launch`` (its
upstream server) and ``state.launch`` (a local Redis for ``serve --workers``).

One process launches: the only gateway, or the parent of ``serve --workers N``
before it starts its workers, so N workers never race to start one server
twice; a worker finds it healthy and leaves it alone. A process is started
with :class:`subprocess.Popen` (not an event loop's subprocess), so the
parent can start it in one loop and stop it in another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from gateway.config import GatewayConfig, LaunchConfig

log = logging.getLogger("gateway.launcher")

Probe = Callable[[], Awaitable[bool]]  # whether the launched server answers now


class LaunchError(RuntimeError):
    """A launched process exited or did not become healthy before its deadline."""


def http_probe(url: str) -> Probe:
    """Healthy when ``GET url`` answers 200 (an upstream's model list)."""

    async def probe() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    return probe


def redis_probe(url: str) -> Probe:
    """Healthy when the Redis at ``url`` answers PING."""

    async def probe() -> bool:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()

    return probe


class Launched:
    """One launched process. ``start`` reuses a server that is already healthy."""

    def __init__(self, name: str, launch: LaunchConfig, log_dir: Path, probe: Probe) -> None:
        self.name = name
        self.launch = launch
        self.log_path = log_dir / f"{name}.log"
        self.healthy = probe
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start the command unless the server already answers; wait until it is healthy."""
        if await self.healthy():
            log.info("%s already answers; not launching", self.name)
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.launch.command,
                env={**os.environ, **self.launch.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group, so stop() reaches its workers too
            )
        log.info("launched %s (pid %d), log in %s", self.name, self.process.pid, self.log_path)
        deadline = time.monotonic() + self.launch.ready_timeout_s
        while not await self.healthy():
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise LaunchError(f"{self.name}: launch command exited with {code}; see {self.log_path}")
            if time.monotonic() > deadline:
                await self.stop()
                raise LaunchError(
                    f"{self.name}: not healthy after {self.launch.ready_timeout_s:g}s; see {self.log_path}"
                )
            await asyncio.sleep(0.5)  # polling a health check: the only signal there is
        log.info("%s is healthy", self.name)

    async def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``grace_s``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)


def launched_by(config: GatewayConfig) -> list[Launched]:
    """What ``config`` launches, in start order: the state's Redis (the state connects to it), then models."""
    log_dir = config.cache_dir / "logs"
    launched = []
    state = config.state
    if state.launch is not None and state.url is not None:
        launched.append(Launched("redis", state.launch, log_dir, redis_probe(state.url)))
    for model in config.models:
        if model.launch is not None:
            probe = http_probe((model.api_base or "").rstrip("/") + "/models")
            launched.append(Launched(model.name, model.launch, log_dir, probe))
    return launched


async def start_all(launched: list[Launched]) -> None:
    """Start each in order; on a failure, stop the ones already started, then raise."""
    for i, process in enumerate(launched):
        try:
            await process.start()
        except BaseException:
            await stop_all(launched[:i])
            raise


async def stop_all(launched: list[Launched]) -> None:
    """Stop each, in reverse start order."""
    for process in reversed(launched):
        await process.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
