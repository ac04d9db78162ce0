"""`scorer run --batch`: submit the round through the batch lane, report progress, then score as usual."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from tests.processes import until
from tests.scorer_fixtures import StoppableGateway, metric_values, read_results, scorer, stoppable_gateway
from tests.upstreams import VLLMServer

DEMO = ["capitals", "--model", "smollm2", "--limit", "4"]


@pytest.fixture
async def stoppable(vllm: VLLMServer, tmp_path: Path) -> AsyncIterator[StoppableGateway]:
    async with stoppable_gateway(vllm, tmp_path) as gateway:
        yield gateway


async def test_a_batch_run_returns_submitted_then_scores_like_a_plain_run(
    stoppable: StoppableGateway,
) -> None:
    args = [*DEMO, "--gateway", stoppable.url, "--cache-dir", str(stoppable.cache_dir)]
    submitted = await scorer("run", *args, "--run-id", "batched", "--batch")
    assert submitted.code == 0, submitted.stderr[-3000:]
    assert "batches pending" in submitted.stderr and "batch_" in submitted.stderr
    assert not (run_dir(stoppable.cache_dir, "batched") / "scorer" / "results.json").exists()

    async def completed() -> bool:
        status = await scorer("status", "batched", "--cache-dir", str(stoppable.cache_dir))
        assert status.code == 0, status.stderr
        return "completed" in status.stdout and "/" in status.stdout

    await until(completed, 120, "the run's batch to complete", every_s=0.5)
    finished = await scorer("run", *args, "--run-id", "batched", "--batch")
    assert finished.code == 0, finished.stderr[-3000:]
    calls = Counter(stoppable.relay.calls)

    plain = await scorer("run", *args, "--run-id", "plain")
    assert plain.code == 0, plain.stderr[-3000:]
    assert stoppable.relay.calls == calls, "the plain run asked the model again for answers the batch got"
    batched = read_results(run_dir(stoppable.cache_dir, "batched") / "scorer" / "results.json")
    assert metric_values(batched) == metric_values(
        read_results(run_dir(stoppable.cache_dir, "plain") / "scorer" / "results.json")
    )
    # The batch's lines are recorded under the round's label, as the plain run's requests are.
    records = read_records(shard_paths(run_dir(stoppable.cache_dir, "batched")), resolve_refs=False)
    assert {r.get("task") for r in records if r.get("endpoint") == "/v1/completions"} == {"capitals"}
