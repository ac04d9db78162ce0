"""Scorer test helpers: a gateway (and relay) a test can stop, and the scorer run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.config import parse_config
from tests.conftest import model_yaml
from tests.upstreams import CountingRelay, VLLMServer

# Modules through which a process could reach a model. `scorer score` must import none of them.
NETWORK_MODULES = ("aiohttp", "litellm", "openai", "requests", "httpx", "urllib3", "gateway", "scorer.client")

# Run before the scorer in a child process: importing any of NETWORK_MODULES fails loudly.
_BLOCKER = """
import sys
class _Block:
    blocked = {blocked!r}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked or name in self.blocked:
            raise ImportError("blocked in this test: " + name)
        return None
sys.meta_path.insert(0, _Block())
from scorer.cli import main
sys.argv = ["scorer", *sys.argv[1:]]
main()
"""


@dataclass
class Outcome:
    """A finished scorer process."""

    code: int
    stdout: str
    stderr: str


async def scorer(*args: str, block_network: bool = False, timeout_s: float = 120) -> Outcome:
    """Run the scorer CLI in a child process (the test's event loop keeps serving meanwhile)."""
    if block_network:
        command = [sys.executable, "-c", _BLOCKER.format(blocked=NETWORK_MODULES), *args]
    else:
        command = [sys.executable, "-m", "scorer", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Outcome(process.returncode, out.decode(), err.decode())


def metric_values(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each task's ``metric,filter`` values from a results document (lm-eval's or ours)."""
    return {
        task: {k: v for k, v in entry.items() if "," in k and "_stderr" not in k}
        for task, entry in results["results"].items()
    }


def read_results(path: Path) -> dict[str, Any]:
    """A results JSON file."""
    return dict(json.loads(path.read_text()))


@dataclass
class StoppableGateway:
    """A gateway and its counting relay in front of the real vLLM, both stoppable mid-test."""

    url: str
    cache_dir: Path
    relay: CountingRelay
    server: TestServer
    stopped: bool = False

    async def stop(self) -> None:
        """Stop the gateway and the relay: nothing can answer a model request any more."""
        if not self.stopped:
            self.stopped = True
            await self.server.close()
            await self.relay.stop()


async def scorer_run(gateway: StoppableGateway, run_id: str, *args: str, timeout_s: float = 120) -> Outcome:
    """``scorer run ARGS`` (the tasks first) under ``run_id``, through ``gateway``, in its cache dir."""
    common = ["--gateway", gateway.url, "--run-id", run_id, "--cache-dir", str(gateway.cache_dir)]
    return await scorer("run", *args, *common, timeout_s=timeout_s)


@asynccontextmanager
async def stoppable_gateway(vllm: VLLMServer, tmp_path: Path) -> AsyncIterator[StoppableGateway]:
    """A gateway over a counting relay over the real model, with its own cache dir (use in a fixture)."""
    relay = CountingRelay(vllm.url)
    await relay.start()
    cache_dir = tmp_path / "store"
    config = parse_config(model_yaml(relay.url + "/v1"), "scorer test", cache_dir=str(cache_dir))
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    gateway = StoppableGateway(str(server.make_url("")).rstrip("/"), cache_dir, relay, server)
    yield gateway
    await gateway.stop()


def tree_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: to prove nothing changed."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
