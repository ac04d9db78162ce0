"""Shared fixtures: one real vLLM per test session, counting relays, and gateways in-process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from gateway.app import PIPELINE, create_app
from gateway.config import GatewayConfig, parse_config
from gateway.upstream import Upstream
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.standin import StandIn
from tests.upstreams import CountingRelay, VLLMServer, vllm_available

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """The real local model server (SmolLM2 on CPU vLLM), started once per session."""
    if not os.environ.get("REPLAYGATE_TEST_VLLM_URL") and not vllm_available():
        message = "the local vLLM is not set up: run deploy/bootstrap.sh"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = VLLMServer(tmp_path_factory.mktemp("vllm") / "vllm.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server of this test session's own, on a free port (never the system's service)."""
    if REDIS_SERVER is None:
        message = "redis-server is not installed: run deploy/bootstrap.sh redis"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis, emptied for this test (running again if an earlier test stopped it)."""
    if not redis_server.ping():
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    """The fault-injecting stand-in upstream (tests/standin.py), in this event loop."""
    server = StandIn()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def other_standin() -> AsyncIterator[StandIn]:
    """A second stand-in, for proving one upstream's trouble leaves another alone."""
    server = StandIn()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def relay(vllm: VLLMServer) -> AsyncIterator[CountingRelay]:
    """A counting relay in front of the real vLLM: the upstream-call counter tests trust."""
    relay = CountingRelay(vllm.url)
    await relay.start()
    yield relay
    await relay.stop()


@dataclass
class RunningGateway:
    """A gateway served in-process on a real port."""

    url: str
    config: GatewayConfig
    session: aiohttp.ClientSession
    app: web.Application

    @property
    def cache_dir(self) -> Path:
        return self.config.cache_dir

    def records(self, run_id: str = "default") -> list[dict[str, Any]]:
        """Every record of ``run_id`` this gateway's store holds, oldest shard first."""
        return list(read_records(shard_paths(run_dir(self.cache_dir, run_id))))

    def upstream(self, model: str) -> Upstream:
        """The scheduling layer in front of ``model``'s provider."""
        return self.app[PIPELINE].upstreams[model]

    async def post(self, path: str, body: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        """POST JSON (or raw bytes) and read the whole body."""
        data = body if isinstance(body, bytes | str) else None
        json = None if data is not None else body
        response = await self.session.post(self.url + path, json=json, data=data, **kwargs)
        await response.read()
        return response


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Start gateways from YAML text; all are stopped when the test ends."""
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(yaml_text: str, cache_dir: Path | None = None) -> RunningGateway:
        if "shutdown_timeout_s" not in yaml_text:
            # Stopping waits for the upstream calls in flight: what a test left queued or held
            # (behind a rate limit, a hang) is cut and recorded after a second, not waited for.
            yaml_text += "\nshutdown_timeout_s: 1\n"
        config = parse_config(yaml_text, "test config", cache_dir=str(cache_dir or tmp_path / "store"))
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sessions.append(session)
        return RunningGateway(str(server.make_url("")).rstrip("/"), config, session, server.app)

    yield start
    for session in sessions:
        await session.close()
    for server in servers:
        await server.close()


def model_yaml(api_base: str, name: str = "smollm2", **extra: Any) -> str:
    """A one-model config pointing at ``api_base``."""
    lines = [f"  - name: {name}", "    provider: openai-compatible", f"    api_base: {api_base}"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "models:\n" + "\n".join(lines) + "\n"


@pytest.fixture
async def gateway(relay: CountingRelay, make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway in front of the real vLLM, through the counting relay."""
    return await make_gateway(model_yaml(relay.url + "/v1"))
