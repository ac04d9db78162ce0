"""A full disk: a clear 503 instead of acknowledging what the gateway cannot keep, and recovery after."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from cache.records import RecordWriteError, RecordWriter
from cache.runs import run_dir
from tests.conftest import IN_CI, GatewayFactory, model_yaml
from tests.records_check import assert_acknowledged_are_recorded, read_run
from tests.standin import StandIn

DISK_SIZE = "4m"
PROMPTS = [f"while full {i}" for i in range(12)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own, so filling it harms nothing else."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            why = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
    if why:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the disk says ENOSPC; returns the bytes it took."""
    taken = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                taken += os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return taken
    finally:
        os.close(fd)


def tracebacks(caplog: pytest.LogCaptureFixture) -> str:
    """What the gateway logged as unhandled, with tracebacks, for a failure message."""
    return "\n".join(r.getMessage() + "\n" + (r.exc_text or "") for r in caplog.records if r.levelno >= 40)


async def test_a_full_disk_gets_a_clear_503_never_a_500_and_the_gateway_recovers_when_space_returns(
    small_disk: Path, standin: StandIn, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    gateway = await make_gateway(
        model_yaml(standin.api_base, name="standin", retries="{attempts: 1}"), cache_dir=small_disk / "store"
    )
    acknowledged: dict[str, bytes] = {}

    async def ask(prompt: str) -> tuple[int, bytes, str]:
        body = {"model": "standin", "prompt": prompt, "max_tokens": 4}
        response = await gateway.post("/runs/full/v1/completions", body)
        data = await response.read()
        if response.status == 200:
            acknowledged[response.headers["X-Record-Key"]] = data
        return response.status, data, response.headers.get("X-Cache", "")

    assert (await ask("before"))[0] == 200
    filler = small_disk / "filler"
    fill(filler)

    refused = 0
    for prompt in [*PROMPTS, "before"]:  # new answers, and a hit whose record cannot be written either
        status, data, _ = await ask(prompt)
        assert status != 500, f"a full disk gave {prompt!r} a 500: {data!r}\n{tracebacks(caplog)}"
        if status != 200:
            error = orjson.loads(data)["error"]
            assert (status, error["code"]) == (503, "record_write_failed"), data
            assert "No space left on device" in error["message"], error
            refused += 1
    assert refused, "the disk was full, yet every request was acknowledged"

    filler.unlink()  # space returns
    for prompt in [*PROMPTS, "before"]:
        status, data, _ = await ask(prompt)
        assert status == 200, f"{prompt!r} after space returned: {status} {data!r}\n{tracebacks(caplog)}"

    records, _ = read_run(run_dir(gateway.cache_dir, "full"))
    assert_acknowledged_are_recorded(acknowledged, records)
    assert not tracebacks(caplog), tracebacks(caplog)


async def test_a_record_refused_for_want_of_space_leaves_no_broken_line_before_the_next_one(
    small_disk: Path,
) -> None:
    writer = RecordWriter(small_disk, fsync="never")
    written: list[str] = []
    try:
        await writer.append("r", {"key": "before", "pad": "x" * 100})
        filler = small_disk / "filler"
        fill(filler)
        with pytest.raises(RecordWriteError):
            for i in range(100):  # the shard's last page may still hold a line or two
                await writer.append("r", {"key": f"full-{i}", "pad": "x" * 1500})
                written.append(f"full-{i}")
        filler.unlink()
        await writer.append("r", {"key": "after", "pad": "x" * 100})
    finally:
        writer.close()
    records, _ = read_run(small_disk / "runs" / "r")
    assert [r["key"] for r in records] == ["before", *written, "after"]
