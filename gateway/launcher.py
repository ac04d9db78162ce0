"""Upstreams the gateway starts itself (a model entry's ``launch``), waits for, and stops with itself."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import aiohttp

from gateway.config import ModelConfig

log = logging.getLogger("gateway.launcher")


class LaunchError(RuntimeError):
    """A launched upstream exited or did not become healthy before its deadline."""


class LaunchedUpstream:
    """One launched process. ``start`` reuses an upstream that is already healthy."""

    def __init__(self, model: ModelConfig, log_dir: Path) -> None:
        assert model.launch is not None
        self.model = model
        self.launch = model.launch
        self.log_path = log_dir / f"{model.name}.log"
        self.health_url = (model.api_base or "").rstrip("/") + "/models"
        self.process: asyncio.subprocess.Process | None = None

    async def healthy(self, session: aiohttp.ClientSession) -> bool:
        """Whether the upstream answers its model list now."""
        try:
            async with session.get(self.health_url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Start the command unless the upstream already answers; wait until it is healthy."""
        if await self.healthy(session):
            log.info("%s already answers at %s; not launching", self.model.name, self.health_url)
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.launch.command,
                env={**os.environ, **self.launch.env},
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own group, so stop() reaches its workers too
            )
        log.info("launched %s (pid %d), log in %s", self.model.name, self.process.pid, self.log_path)
        deadline = time.monotonic() + self.launch.ready_timeout_s
        while not await self.healthy(session):
            if self.process.returncode is not None:
                raise LaunchError(
                    f"{self.model.name}: launch command exited with {self.process.returncode}; "
                    f"see {self.log_path}"
                )
            if time.monotonic() > deadline:
                await self.stop()
                raise LaunchError(
                    f"{self.model.name}: not healthy after {self.launch.ready_timeout_s:g}s; "
                    f"see {self.log_path}"
                )
            await asyncio.sleep(0.5)  # polling a health endpoint: the only signal there is
        log.info("%s is healthy", self.model.name)

    async def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``grace_s``."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except asyncio.TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
