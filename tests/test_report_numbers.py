"""Report numbers that hold on small runs: exact percentiles, cached apart from upstream, no made-up rates."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.report.quantiles import EXACT_LIMIT, Latencies, nearest_rank
from gateway.report.render import cell, human


def write_run(cache_dir: Path, run_id: str, records: list[dict]) -> None:
    folder = cache_dir / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "1-host-1.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def record(
    served: str,
    latency: float,
    *,
    model: str = "local",
    endpoint: str = "/v1/completions",
    ts: float = 100.0,
    cost: float = 0.0,
) -> dict:  # noqa: E501
    return {
        "served": served,
        "status": 200,
        "model": model,
        "endpoint": endpoint,
        "ts": ts,
        "ts_end": ts + latency / 1000,
        "latency_ms": latency,
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        "cost_usd": cost if served == "miss" else 0.0,
        "cost_saved_usd": cost if served == "hit" else 0.0,
        "error": None,
    }


def report_json(cache_dir: Path, run_id: str) -> dict:
    result = CliRunner().invoke(main, ["report", run_id, "--format", "json", "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


def test_three_records_report_their_slowest_as_p99_with_hits_apart_from_misses(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        "small",
        [record("hit", 0.005), record("hit", 0.007, ts=101), record("miss", 185.0, ts=102)],
    )
    total = report_json(tmp_path, "small")["total"]
    cached, upstream = total["latency_ms"]["cached"], total["latency_ms"]["upstream"]
    assert (cached["count"], cached["p50"], cached["p99"], cached["max"]) == (2, 0.005, 0.007, 0.007)
    assert (upstream["count"], upstream["p50"], upstream["p99"], upstream["max"]) == (1, 185.0, 185.0, 185.0)


def test_big_groups_use_the_sketch_within_one_percent_of_a_direct_computation() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(5, 1) for _ in range(EXACT_LIMIT * 3)]
    latencies = Latencies()
    for v in values:
        latencies.add(v)
    assert not latencies.is_exact and latencies.max == max(values)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        assert latencies.quantile(q) == pytest.approx(nearest_rank(ordered, q), rel=0.02)


def test_tokenizer_calls_are_counted_apart_from_completions(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        "tok",
        [
            record("miss", 200.0),
            record("hit", 0.01, endpoint="/tokenize", ts=101),
            record("miss", 0.5, endpoint="/tokenizer_info", ts=102),
        ],
    )
    total = report_json(tmp_path, "tok")["total"]
    assert (total["requests"], total["completions"], total["tokenizer_calls"]) == (3, 1, 2)
    assert total["served"]["miss"] == 1 and total["served"]["hit"] == 0 and total["hit_ratio"] == 0
    assert total["latency_ms"]["upstream"]["count"] == 1 and total["latency_ms"]["upstream"]["p50"] == 200.0


def test_free_models_cost_a_dash_and_one_request_has_no_rate(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        "mixed",
        [record("miss", 10.0, model="local"), record("miss", 10.0, model="paid", ts=200, cost=0.009)],
    )
    data = report_json(tmp_path, "mixed")
    groups = {g["name"]: g for g in data["groups"]}
    assert groups["local"]["free"] and not groups["paid"]["free"]
    assert groups["paid"]["throughput_rps"] is None  # one request: no 100 req/s from its own latency
    assert data["total"]["throughput_rps"] == pytest.approx(2 / 100.01, rel=1e-3)
    table = CliRunner().invoke(main, ["report", "mixed", "--cache-dir", str(tmp_path)]).output
    lines = {line.split()[0]: line for line in table.splitlines()[3:]}
    assert "0.009" in lines["paid"] and "0.009000" not in table
    assert lines["local"].split()[11:14] == ["—", "—", "—"]  # cost, batch cost and saved of the free model
    assert "$0.000000" not in table and "0.000000" not in table


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.009, "0.009"),
        (0.000123456, "0.000123"),
        (12.345, "12.3"),
        (1224.376, "1,224"),
        (0.0, "0"),
        (0.5, "0.5"),
    ],
)
def test_numbers_are_formatted_for_people(value: float, text: str) -> None:
    assert human(value) == text and cell(value) == text
