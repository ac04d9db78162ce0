"""``gateway serve --workers N``: N processes serving one port, each a whole gateway with its own shards.

The parent reserves the port (bound with ``SO_REUSEPORT``, never listening,
so it is never handed a connection), starts N ``gateway serve`` children on
it, passes SIGTERM/SIGINT on to them and exits with the worst of their exit
codes. Each child writes its own record shards (their names carry its pid).
What the config launches (models' upstreams, ``state.launch``'s Redis) the
parent starts once before the children and stops after them.

With ``state: {backend: redis}`` the workers share the index, single-flight,
limits and sample counters. With the local backend they share only the
cache dir (records and the on-disk index); single-flight and sample counters
are per worker, and each worker's limits are ``1/N`` of the configured ones,
so together they stay within them. The parent says so when it starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from gateway.config import ConfigError, GatewayConfig, load_config

WORKERS_ENV = "REPLAYGATE_WORKERS"


def worker_count() -> int:
    """How many workers this process is one of (1 when not started by ``--workers``)."""
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        return 1


def as_worker(config: GatewayConfig) -> GatewayConfig:
    """``config`` for one of ``worker_count()`` workers: limits shared ``1/N`` unless state says otherwise."""
    count = worker_count()
    if count == 1 or config.state.replicas != 1:
        return config
    return config.model_copy(update={"state": config.state.model_copy(update={"replicas": count})})


def serve_workers(
    workers: int, config_path: Path | None, host: str | None, port: int | None, cache_dir: Path | None
) -> int:
    """Run ``workers`` gateway processes on one port until they stop; the worst exit code."""
    from gateway.cli import _bound_socket
    from gateway.launcher import LaunchError, launched_by, start_all, stop_all
    from gateway.state import PER_PROCESS

    try:
        config = load_config(config_path, host=host, port=port, cache_dir=cache_dir)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    try:
        reserved = _bound_socket(config.host, config.port, reuse_port=True)
    except OSError as exc:
        print(
            f"gateway: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    bound_port = reserved.getsockname()[1]
    shared = "shared through redis" if config.state.backend == "redis" else f"per worker: {PER_PROCESS}"
    print(f"gateway: {workers} workers on port {bound_port}; state {shared}", file=sys.stderr)
    launched = launched_by(config)
    try:
        asyncio.run(start_all(launched))
    except LaunchError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    argv = _without_workers(sys.argv[1:]) + ["--port", str(bound_port)]
    env = {**os.environ, WORKERS_ENV: str(workers)}
    children = [
        subprocess.Popen([sys.executable, "-m", "gateway.cli", *argv], env=env) for _ in range(workers)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    reserved.close()
    asyncio.run(stop_all(launched))
    return max(codes, key=abs)


def _without_workers(argv: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        kept.append(arg)
    return kept
