"""Open files: thousands of run-ids never exhaust the gateway's descriptors."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import orjson
import pytest

from cache.records import FsyncPolicy, RecordWriter, read_records, shard_paths
from cache.runs import run_dir
from tests.processes import REPO, GatewayProcess, gateway_config
from tests.standin import StandIn


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_a_writer_keeps_at_most_max_open_shards_and_loses_no_line(
    tmp_path: Path, fsync: FsyncPolicy
) -> None:
    before = open_fds()
    writer = RecordWriter(tmp_path, fsync=fsync, fsync_interval=0.01, max_open=3)
    try:
        for round_ in range(3):  # every run comes back after being closed, at least twice
            for start in range(0, 60, 7):  # a few runs per event-loop turn: evictions inside one commit
                runs = [f"run-{i}" for i in range(start, min(start + 7, 60))]
                await asyncio.gather(*(writer.append(r, {"key": f"{r}/{round_}"}) for r in runs))
                assert writer.open_shards <= 3
        # The fsync thread closes what it was handed within a round; nothing more stays open.
        for _ in range(200):
            if open_fds() <= before + 3 + 1:  # the shards kept, and the fsync thread's own nothing
                break
            await asyncio.sleep(0.01)
        assert open_fds() <= before + 3 + 1
    finally:
        writer.close()
    assert open_fds() <= before
    for i in range(60):
        keys = [r["key"] for r in read_records(shard_paths(run_dir(tmp_path, f"run-{i}")))]
        assert keys == [f"run-{i}/{n}" for n in range(3)]


def test_a_writer_out_of_descriptors_closes_its_own_shards_and_keeps_writing(tmp_path: Path) -> None:
    # A child whose open-file limit leaves no room for the shards its max_open allows.
    child = textwrap.dedent(
        f"""
        import asyncio, os, resource
        from pathlib import Path
        from cache.records import RecordWriter
        async def main():
            writer = RecordWriter(Path({str(tmp_path)!r}), fsync="interval", fsync_interval=5, max_open=1000)
            used = len(os.listdir("/proc/self/fd"))
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (used + 20, hard))
            for i in range(200):
                await writer.append(f"run-{{i}}", {{"key": i}})
            print("open", writer.open_shards, flush=True)
            writer.close()
        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[1]) < 20
    for i in range(200):
        assert [r["key"] for r in read_records(shard_paths(run_dir(tmp_path, f"run-{i}")))] == [i]


def _limit_open_files(soft: int, hard: int):  # type: ignore[no-untyped-def]
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line in /proc/<pid>/limits")


async def test_many_run_ids_under_a_low_open_file_limit_all_get_200_and_healthz_answers(
    tmp_path: Path, standin: StandIn
) -> None:
    config = gateway_config(tmp_path / "gateway.yaml", standin.api_base, fsync="interval")
    gateway = GatewayProcess(config, tmp_path / "store", tmp_path / "gateway.log")
    gateway.start(preexec_fn=_limit_open_files(64, 160))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
            await gateway.wait_healthy(session)
            assert _soft_limit(gateway.pid) == 160  # `gateway serve` raised its soft limit to the hard one

            async def ask(i: int) -> int:
                body = {"model": "standin", "prompt": f"p{i}", "max_tokens": 2, "temperature": 0}
                async with session.post(f"{gateway.url}/runs/r{i}/v1/completions", json=body) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(ask(i) for i in range(400)))
            assert statuses.count(200) == 400, (
                f"{[s for s in statuses if s != 200][:5]}...\n{gateway.log_tail()}"
            )
            async with session.get(gateway.url + "/healthz") as response:
                assert response.status == 200
            assert gateway.open_fds() < 160
    finally:
        assert gateway.stop() == 0, gateway.log_tail()
    for i in (0, 199, 399):
        (record,) = read_records(shard_paths(run_dir(tmp_path / "store", f"r{i}")))
        assert orjson.loads(orjson.dumps(record["response"]))["choices"][0]["text"] == f" answer to p{i}"
