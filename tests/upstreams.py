"""Upstreams for tests: the real local vLLM, a counting HTTP relay in front of it, and free ports."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.config import replaygate_home

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_command(port: int) -> list[str]:
    """The command that serves SmolLM2 on ``port`` from the set-up under $REPLAYGATE_HOME."""
    home = replaygate_home()
    return [
        str(home / "vllm-venv" / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(home / "models" / "SmolLM2-135M-Instruct"),
        "--served-model-name",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--enable-tokenizer-info-endpoint",
    ]


def vllm_available() -> bool:
    """Whether deploy/bootstrap.sh has set up the vLLM venv and the model."""
    home = replaygate_home()
    return (home / "vllm-venv" / ".complete").exists() and (
        home / "models" / "SmolLM2-135M-Instruct" / ".complete"
    ).exists()


class VLLMServer:
    """A vLLM OpenAI server started for a test session (or one already running, via env)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.url = os.environ.get("REPLAYGATE_TEST_VLLM_URL", "")

    def start(self, timeout_s: float = 600) -> None:
        """Start vLLM and wait until it serves (and is warm), or raise."""
        if not self.url:
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    vllm_command(port),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM not ready after {timeout_s}s; see {self.log_path}")
            time.sleep(0.5)  # polling its health endpoint: there is no other signal
        self._warm_up()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _warm_up(self) -> None:
        # The first echo+logprobs request takes ~10 s; pay it before anything is timed.
        body = b'{"model":"smollm2","prompt":"warm up","max_tokens":1,"echo":true,"logprobs":1}'
        request = urllib.request.Request(
            self.url + "/v1/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()

    def stop(self) -> None:
        """Stop the server if this session started it."""
        if self.process is not None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


class CountingRelay:
    """An HTTP relay in front of an upstream that counts every request it forwards, by path.

    The gateway's word is not evidence of how often it called upstream; this is.
    """

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.calls: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The relay's base URL (no ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def total(self) -> int:
        """Requests forwarded so far."""
        return sum(self.calls.values())

    async def start(self, port: int = 0) -> None:
        """Listen on ``port`` (a free one by default)."""
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.calls[request.path] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            data=await request.read(),
            headers=headers,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_HEADERS:
                    response.headers[k] = v
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


async def _serve_relay(target: str, port: int) -> None:
    await CountingRelay(target).start(port)
    await asyncio.Event().wait()


if __name__ == "__main__":  # a relay as its own process: python -m tests.upstreams TARGET PORT
    import sys

    asyncio.run(_serve_relay(sys.argv[1], int(sys.argv[2])))
