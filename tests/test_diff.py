"""`gateway diff`: requests in both runs, only in one, differing answers and totals, equal to a recount."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from benchmarks.bench_report import synthetic_records
from gateway.cli import main


def write(cache_dir: Path, run_id: str, records: list[dict]) -> Path:
    folder = cache_dir / "runs" / run_id
    folder.mkdir(parents=True)
    path = folder / "1-host-1.jsonl"
    path.write_bytes(b"".join(orjson.dumps({**r, "run_id": run_id}) + b"\n" for r in records))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run a: requests 0-999; run b: 500-1499, every 7th shared one answered differently, one asked twice."""
    cache_dir = tmp_path_factory.mktemp("store")
    records = list(synthetic_records(1500, seed=5))
    write(cache_dir, "a", records[:1000])
    b = [dict(r) for r in records[500:]]
    for i, r in enumerate(b[:500]):
        if i % 7 == 0 and r["response"] is not None:
            r["response"] = {**r["response"], "choices": [{"index": 0, "text": f" changed {i}"}]}
    b.append(dict(records[600]))  # asked again later with a's answer: its latest answer counts
    write(cache_dir, "b", b)
    return cache_dir


def recount(store: Path) -> dict:
    def latest(run: str) -> dict[str, str]:
        out = {}
        for line in (store / "runs" / run / "1-host-1.jsonl").read_text().splitlines():
            r = json.loads(line)
            answer = f"error: {r['error']['code']}" if r["error"] else r["response"]["choices"][0]["text"]
            out[r["key"]] = answer
        return out

    a, b = latest("a"), latest("b")
    both = a.keys() & b.keys()
    return {
        "both": len(both),
        "different_answer": sum(a[k] != b[k] for k in both),
        "only_a": len(a.keys() - b.keys()),
        "only_b": len(b.keys() - a.keys()),
        "changed": {k for k in both if a[k] != b[k]},
    }


def diff(store: Path, *args: str) -> dict:
    result = CliRunner().invoke(
        main, ["diff", "a", "b", *args, "--format", "json", "--cache-dir", str(store)]
    )
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


def test_diff_equals_a_recount_of_the_raw_jsonl(store: Path) -> None:
    want = recount(store)
    got = diff(store, "--examples", "1000")
    assert want["different_answer"] > 50 and want["only_a"] == want["only_b"] == 500
    for field in ("both", "different_answer", "only_a", "only_b"):
        assert got[field] == want[field], field
    assert got["same_answer"] == want["both"] - want["different_answer"]
    assert {c["identity"] for c in got["changed"]} == want["changed"]
    change = got["changed"][0]
    assert change["answer_b"].startswith(" changed") and not change["answer_a"].startswith(" changed")
    assert got["totals"]["a"]["requests"] == 1000 and got["totals"]["b"]["requests"] == 1001


def test_matching_by_request_pairs_a_rerun_on_another_model(tmp_path: Path) -> None:
    base = next(iter(synthetic_records(1, seed=1)))
    other = {**base, "key": "f" * 64, "model": "other", "upstream_model": "other"}
    other["request"] = {**base["request"], "model": "other"}
    other["response"] = {**base["response"], "choices": [{"index": 0, "text": " something else"}]}
    write(tmp_path, "a", [base])
    write(tmp_path, "b", [other])
    by_key = diff(tmp_path)
    assert (by_key["both"], by_key["only_a"], by_key["only_b"]) == (0, 1, 1)
    by_request = diff(tmp_path, "--match", "request")
    assert (by_request["both"], by_request["different_answer"]) == (1, 1)
    (change,) = by_request["changed"]
    assert (change["model_a"], change["model_b"], change["answer_b"]) == (
        base["model"],
        "other",
        " something else",
    )


def test_the_table_shows_totals_and_answers_side_by_side(store: Path) -> None:
    out = CliRunner().invoke(main, ["diff", "a", "b", "--examples", "2", "--cache-dir", str(store)]).output
    assert "only in a: 500" in out and "only in b: 500" in out
    assert "cost (USD)" in out and out.count("≠ ") == 2 and "changed" in out
