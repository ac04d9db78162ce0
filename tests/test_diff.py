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


def write_samples(cache_dir: Path, run_id: str, task: str, rows: list[dict]) -> None:
    folder = cache_dir / "runs" / run_id / "scorer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"samples_{task}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def sample_row(doc_id: int, filter_name: str, metrics: dict) -> dict:
    """A row shaped as `scorer score` writes it (scorer/scoring.py), prompt and response included."""
    return {
        "doc_id": doc_id,
        "filter": filter_name,
        "doc": {"question": f"q{doc_id}"},
        "prompt": f"Question: q{doc_id}",
        "target": "A",
        "response": [" A"],
        "filtered": ["A"],
        "loglikelihoods": None,
        "metrics": metrics,
        "keys": ["0" * 64],
    }


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two scorer runs: `gsm` (two filters, exact_match and f1), `mmlu` (acc as bools), a task only in a."""
    import random

    cache_dir = tmp_path_factory.mktemp("scored")
    records = list(synthetic_records(10, seed=2))
    write(cache_dir, "a", records)
    write(cache_dir, "b", records)
    rng = random.Random(7)
    for run, docs in (("a", range(0, 300)), ("b", range(10, 310))):  # 10 docs only in a, 10 only in b
        gsm = [
            sample_row(d, f, {"exact_match": rng.choice([0.0, 1.0]), "f1": rng.choice([0.0, 0.5, 1.0])})
            for d in docs
            for f in ("strict-match", "flexible-extract")
        ]
        write_samples(cache_dir, run, "gsm", gsm)
        write_samples(
            cache_dir, run, "mmlu", [sample_row(d, "none", {"acc": rng.random() < 0.5}) for d in docs]
        )
    write_samples(cache_dir, "a", "only_in_a", [sample_row(0, "none", {"acc": 1.0})])
    return cache_dir


def recount_flips(cache_dir: Path) -> dict[tuple[str, str, str], dict[str, list]]:
    """For each (task, filter, metric): doc ids that went up and down from a to b, read from the raw files."""

    def values(run: str, task: str) -> dict[tuple, dict]:
        path = cache_dir / "runs" / run / "scorer" / f"samples_{task}.jsonl"
        return {
            (r["doc_id"], r["filter"]): r["metrics"] for r in map(json.loads, path.read_text().splitlines())
        }

    out: dict[tuple[str, str, str], dict[str, list]] = {}
    for task in ("gsm", "mmlu"):
        a, b = values("a", task), values("b", task)
        for doc_id, filter_name in b:
            if (doc_id, filter_name) not in a:
                continue
            for metric, vb in b[(doc_id, filter_name)].items():
                va = a[(doc_id, filter_name)][metric]
                slot = out.setdefault((task, filter_name, metric), {"up": [], "down": []})
                if vb > va:
                    slot["up"].append(doc_id)
                elif vb < va:
                    slot["down"].append(doc_id)
    return out


def test_diff_lists_the_samples_whose_metric_flipped_as_a_recount_does(scored: Path) -> None:
    want = recount_flips(scored)
    got = diff(scored)["samples"]
    assert [t["task"] for t in got] == ["gsm", "mmlu"]  # only_in_a has no counterpart in b
    for task in got:
        assert (task["in_both"], task["only_a"], task["only_b"]) == (
            (290 * 2, 10 * 2, 10 * 2) if task["task"] == "gsm" else (290, 10, 10)
        )
    flips = {(m["task"], m["filter"], m["metric"]): m for t in got for m in t["metrics"]}
    assert flips.keys() == want.keys() and len(flips) == 5
    for slot, m in flips.items():
        assert m["up_doc_ids"] == want[slot]["up"] and m["down_doc_ids"] == want[slot]["down"], slot
        assert (m["up"], m["down"], m["other"]) == (len(want[slot]["up"]), len(want[slot]["down"]), 0)
        assert m["changed"] == m["up"] + m["down"] > 50
    acc = flips[("mmlu", "none", "acc")]
    b_rows = (scored / "runs" / "b" / "scorer" / "samples_mmlu.jsonl").read_text().splitlines()
    b_acc = [r["metrics"]["acc"] for r in map(json.loads, b_rows) if r["doc_id"] < 300]
    assert acc["compared"] == 290 and acc["mean_b"] == pytest.approx(sum(b_acc) / len(b_acc))


def test_runs_without_scorer_samples_show_no_sample_section(store: Path) -> None:
    assert diff(store)["samples"] == []
    out = CliRunner().invoke(main, ["diff", "a", "b", "--cache-dir", str(store)]).output
    assert "per-sample" not in out


def test_the_table_and_compare_page_name_the_flipped_doc_ids(scored: Path) -> None:
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.request_pages import RequestPages

    acc = next(m for t in diff(scored)["samples"] if t["task"] == "mmlu" for m in t["metrics"])
    first_up = ", ".join(str(i) for i in acc["up_doc_ids"][:20])
    out = CliRunner().invoke(main, ["diff", "a", "b", "--cache-dir", str(scored)]).output
    assert "per-sample metrics" in out and f"mmlu none acc up: doc ids {first_up}, …" in out
    assert f"{acc['up']:,}" in out.split("mmlu none acc up")[0]  # the table row

    async def page() -> str:
        app = web.Application()
        RequestPages(scored).add_routes(app.router)
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/ui/compare", params={"a": "a", "b": "b"})
            assert response.status == 200
            return await response.text()

    html = asyncio.run(page())
    assert 'id="sample-flips"' in html and f"mmlu none acc up: doc ids {first_up}" in html
