"""The typed run record: its JSON form reads older lines, and /metrics and reports fold it alike."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cache.record import COPIES, PAID, RECORD_SCHEMA, SERVED, Record, Served, from_json, to_json
from cache.records import read_records
from gateway.config import ModelConfig
from gateway.metrics import Metrics
from gateway.pricing import Costs
from gateway.report.aggregate import build_report
from gateway.status import StatusLine

PRICED = ModelConfig(
    name="priced", api_base="https://api.example.com/v1", cost={"input_per_mtok": 2, "output_per_mtok": 8}
)
# A remote model litellm has no price for: its costs are recorded as null.
UNPRICED = ModelConfig(
    name="unpriced", api_base="https://api.example.com/v1", upstream_model="no-such-model-xyz"
)
ANSWER = {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": "four"}]}


def record_of(
    model: ModelConfig, served: Served, costs: Costs, *, error: dict[str, Any] | None = None, **extra: Any
) -> Record:
    """A record as the pipeline makes it (``Pipeline._record``), then priced."""
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    response = {**ANSWER, "usage": usage} if error is None else None
    record: Record = {
        "schema": RECORD_SCHEMA,
        "key": f"k-{served}",
        "run_id": "agree",
        "ts": 100.0,
        "ts_end": 100.25,
        "latency_ms": 250.0,
        "endpoint": extra.pop("endpoint", "/v1/completions"),
        "model": model.name,
        "upstream_model": model.target_model,
        "provider": model.provider,
        "served": served,
        "stream": False,
        "cacheable": True,
        "status": 500 if error else 200,
        "request": {"model": model.target_model, "prompt": "2+2?"},
        "response": response,
        "usage": usage if error is None else None,
        "attempts": extra.pop("attempts", 0 if served not in PAID else 1),
        "failed_attempts": extra.pop("failed_attempts", []),
        "error": error,
        "task": None,
        "ttft_ms": None,
        "sample": None,
        "sample_of": None,
    }
    record.update(costs.of(model, record, response))
    return record


def metric_totals(metrics: Metrics) -> dict[str, float]:
    """Each family's samples summed over their labels."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    out = 0.0
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                out += sample.value
    return out


def test_metrics_and_report_agree_on_unpriced_failed_hit_coalesced_and_batched_records(
    tmp_path: Path,
) -> None:
    costs = Costs([PRICED, UNPRICED])
    failure = {"message": "upstream failed", "type": "server_error", "code": "upstream_error"}
    records = [record_of(model, served, costs) for model in (PRICED, UNPRICED) for served in SERVED] + [
        record_of(
            UNPRICED, "miss", costs, error=failure, attempts=2, failed_attempts=[{"code": "http_500"}] * 2
        ),
        record_of(PRICED, "coalesced", costs, error=failure),
        record_of(UNPRICED, "hit", costs, endpoint="/tokenize"),
    ]
    assert [r["cost_usd"] for r in records if r["model"] == "unpriced" and r["served"] == "miss"][0] is None
    metrics = Metrics()
    for record in records:
        metrics.observe(record)
    folder = tmp_path / "runs" / "agree"
    folder.mkdir(parents=True)
    (folder / "1-host-1.jsonl").write_bytes(b"".join(to_json(r) for r in records))
    report = build_report(tmp_path, "agree")

    for model in ("priced", "unpriced"):
        group = report.groups[model]
        assert metric(metrics, "replaygate_requests_metric_total", model=model) == group.requests
        assert metric(metrics, "replaygate_input_tokens_metric_total", model=model) == group.tokens_in
        assert metric(metrics, "replaygate_output_tokens_metric_total", model=model) == group.tokens_out
        assert metric(metrics, "replaygate_spend_metric_total", model=model) == pytest.approx(group.cost_usd)
        assert metric(metrics, "replaygate_cost_saved_metric_total", model=model) == pytest.approx(
            group.cost_saved_usd
        )
        assert metric(metrics, "replaygate_unpriced_requests_metric_total", model=model) == group.unpriced
        assert metric(metrics, "replaygate_deployment_total_requests_total", model=model) == group.attempts
        for served, name in (
            ("hit", "replaygate_cache_hits_metric_total"),
            ("miss", "replaygate_cache_misses_metric_total"),
            ("coalesced", "replaygate_cache_coalesced_metric_total"),
            ("batched", "replaygate_batched_requests_metric_total"),
        ):
            assert metric(metrics, name, model=model) == group.served.get(served, 0), (model, served)
        for code, n in group.errors.items():
            assert (
                metric(metrics, "replaygate_proxy_failed_requests_metric_total", model=model, code=code) == n
            )
    # Every successful completion of the unpriced model lacks a cost (paid) or a saving (copies).
    assert report.groups["unpriced"].unpriced == len(SERVED)
    assert report.groups["priced"].unpriced == 0 and not report.groups["unpriced"].free
    totals = metrics.totals
    assert (totals.requests, totals.unpriced, totals.failed) == (
        report.total.requests,
        report.total.unpriced,
        report.total.failed,
    )
    assert totals.hit_ratio == pytest.approx(report.total.hit_ratio)


def test_a_record_round_trips_through_its_json_line() -> None:
    record = record_of(PRICED, "miss", Costs([PRICED]))
    record["response"] = orjson.Fragment(orjson.dumps(ANSWER))  # as the pipeline writes it
    line = to_json(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = from_json(line)
    assert back["response"] == ANSWER
    assert {k: v for k, v in back.items() if k != "response"} == {
        k: v for k, v in record.items() if k != "response"
    }


def test_older_records_read_with_the_defaults_of_the_fields_they_lack(tmp_path: Path) -> None:
    old = {"key": "k", "run_id": "r", "ts": 1.0, "latency_ms": 2.0, "endpoint": "/v1/completions",
           "model": "m", "served": "miss", "status": 200, "response": ANSWER}  # fmt: skip
    path = tmp_path / "old.jsonl"
    path.write_bytes(orjson.dumps(old) + b"\n")
    (record,) = read_records([path])
    assert record["schema"] == 0 and record["cacheable"] is True and record["stream"] is False
    assert record["attempts"] == 0 and record["failed_attempts"] == [] and record["error"] is None
    assert record["usage"] is None and record["sample"] is None and record["response"] == ANSWER


def test_the_paid_serving_modes_are_the_fresh_answers_and_copies_are_the_rest() -> None:
    assert PAID | COPIES == set(SERVED) == set(get_args(Served)) and not PAID & COPIES


def test_the_status_line_counts_as_the_report_does() -> None:
    costs = Costs([PRICED, UNPRICED])
    metrics = Metrics()
    for record in (
        record_of(UNPRICED, "miss", costs),
        record_of(UNPRICED, "hit", costs),
        record_of(PRICED, "coalesced", costs, error={"code": "upstream_error"}),
        record_of(PRICED, "miss", costs),
    ):
        metrics.observe(record)
    line = StatusLine(metrics, io.StringIO()).text()
    # Two of four completions were copies (one failed: the report counts it, and so does the line).
    assert "4 requests" in line and "hit 50.0%" in line
    assert "(2 unpriced)" in line and "errors 1" in line
