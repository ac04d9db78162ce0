"""Real processes for tests that kill, share or load the gateway: `gateway serve` and a stand-in upstream."""

from __future__ import annotations

import asyncio
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.upstreams import free_port

REPO = Path(__file__).resolve().parent.parent


def raise_fd_limit() -> int:
    """Lift this process's soft open-files limit to its hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def until(condition: Any, deadline_s: float, what: str, every_s: float = 0.02) -> Any:
    """Poll async ``condition`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {deadline_s}s waiting for {what}"
        await asyncio.sleep(every_s)


async def refused(url: str) -> bool:
    """Whether a new connection (not a pooled one) to ``url`` is turned away.

    A stopping server may still take a connection into its listen backlog and
    never serve it; a GET left unanswered for a second counts as turned away
    too (a server that serves answers ``/healthz`` in milliseconds), so the
    probe itself can never hang.
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as fresh:
        try:
            async with fresh.get(url) as response:
                return response.status != 200
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            return True


class StandInProcess:
    """``python -m tests.standin_process`` on a port it picks and announces."""

    def __init__(self, max_hold_s: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.standin_process", "--max-hold-s", str(max_hold_s)],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise AssertionError(f"the stand-in upstream did not start (said {line!r})")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_base = self.url + "/v1"

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """Calls per prompt (``calls``), ``total``, ``in_flight`` and ``max_in_flight``."""
        async with session.get(self.url + "/stats") as response:
            return orjson.loads(await response.read())  # type: ignore[no-any-return]

    async def arrivals(self, session: aiohttp.ClientSession) -> list[float]:
        """The ``time.monotonic()`` at which each completion call arrived, oldest first."""
        async with session.get(self.url + "/arrivals") as response:
            return orjson.loads(await response.read())  # type: ignore[no-any-return]

    async def release(self, session: aiohttp.ClientSession) -> None:
        """Let held (``hold:``) requests answer."""
        async with session.post(self.url + "/release") as response:
            assert response.status == 200

    def stop(self) -> None:
        """Kill it and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def gateway_config(path: Path, api_base: str, fsync: str = "never", **model: Any) -> Path:
    """Write a one-model (``standin``) gateway config to ``path``."""
    lines = [
        f"records: {{fsync: {fsync}}}",
        "models:",
        "  - name: standin",
        "    provider: openai-compatible",
        f"    api_base: {api_base}",
        "    retries: {attempts: 1}",
    ]
    lines += [f"    {key}: {value}" for key, value in model.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class GatewayProcess:
    """``gateway serve`` as a subprocess that a test may kill at any moment; its stderr goes to a log."""

    def __init__(self, config: Path, cache_dir: Path, log: Path, port: int | None = None) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self.log = log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.signalled = False  # SIGTERM goes out once: a second one mid-shutdown makes it exit 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, preexec_fn: Callable[[], None] | None = None) -> None:
        """Start serving (returns at once; see :meth:`wait_healthy`); ``preexec_fn`` runs in the child."""
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)]
        command += ["--port", str(self.port), "--cache-dir", str(self.cache_dir)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, preexec_fn=preexec_fn)

    async def wait_healthy(self, session: aiohttp.ClientSession, deadline_s: float = 30) -> None:
        """Wait until this process says it serves and ``/healthz`` answers 200 (the only readiness signal).

        Its own "serving" line first: a port from :func:`free_port` may have been taken meanwhile by
        another process (another suite on the machine), whose ``/healthz`` would answer for it.
        """

        async def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, (
                f"gateway exited early:\n{self.log_tail()}"
            )
            if not self.log.exists() or b"gateway: serving" not in self.log.read_bytes():
                return False
            try:
                async with session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        await until(healthy, deadline_s, f"the gateway on {self.url} to be healthy")

    def kill9(self) -> None:
        """SIGKILL: no cleanup of any kind, as a crash or the OOM killer would do it."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        """Send SIGTERM, once: graceful shutdown has begun; later calls do nothing."""
        assert self.process is not None
        if not self.signalled and self.process.poll() is None:
            self.signalled = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM (unless already sent) and wait; returns the exit code (kills it if it does not stop).

        Never signals twice: aiohttp treats a SIGTERM that arrives while it is
        still shutting down as a second GracefulExit and the process exits 1.
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.terminate()
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise
        return self.process.returncode

    def status(self, field: str) -> int:
        """A ``kB`` figure from ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        """User + system CPU time the gateway has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_fds(self) -> int:
        """How many file descriptors the gateway holds (sockets included)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_tail(self, lines: int = 40) -> str:
        """The end of the gateway's stderr, for assertion messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
