"""`gateway log`: a run's requests newest first and filtered, equal to a recount of the raw JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from benchmarks.bench_report import synthetic_records
from gateway.cli import main
from gateway.report.log import Cursor, LogFilter, RunLog

RUN = "logged"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 records over three interleaved shards, with hits that refer to their answer, and a torn line."""
    cache_dir = tmp_path_factory.mktemp("store")
    folder = cache_dir / "runs" / RUN
    folder.mkdir(parents=True)
    shards: list[list[bytes]] = [[], [], []]
    answered: list[str | None] = [None, None, None]  # per shard, the last key written with its answer
    for i, record in enumerate(synthetic_records(2000, seed=3)):
        record["run_id"] = RUN
        shard = shards[i % 3]
        earlier = answered[i % 3]
        if i % 10 == 9 and record["status"] == 200 and earlier:  # a hit of an answer the shard holds
            record["served"] = "hit"
            record["key"] = earlier
            record["request"] = {"model": record["model"], "prompt": "again"}
            record["response"], record["response_ref"] = None, earlier
        elif record["response"] is not None:
            answered[i % 3] = record["key"]
        shard.append(orjson.dumps(record) + b"\n")
    for k, lines in enumerate(shards):
        (folder / f"{k}000-host-{k}.jsonl").write_bytes(b"".join(lines) + (b'{"torn' if k == 1 else b""))
    return cache_dir


def raw_records(store: Path) -> list[dict]:
    """Every record, read naively with json, answers of referring hits filled in from the line they name."""
    out = []
    for path in sorted((store / "runs" / RUN).glob("*.jsonl")):
        answers: dict[str, dict] = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("response") is not None:
                answers[record["key"]] = record["response"]
            elif record.get("response_ref"):
                record = {**record, "_answer": answers[record["response_ref"]]}
            out.append(record)
    return out


def log(store: Path, *args: str) -> list[dict]:
    result = CliRunner().invoke(main, ["log", RUN, *args, "--format", "jsonl", "--cache-dir", str(store)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def answer(record: dict) -> str:
    response = record.get("_answer") or record.get("response") or {}
    return " ".join(c["text"] for c in response.get("choices", []))


def newest_first(records: list[dict]) -> list[str]:
    return [r["key"] + str(r["ts"]) for r in sorted(records, key=lambda r: -r["ts_end"])]


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        ((), lambda r: True),
        (("--served", "hit"), lambda r: r["served"] == "hit"),
        (("--served", "miss", "--served", "coalesced"), lambda r: r["served"] in ("miss", "coalesced")),
        (("--model", "gpt-4o"), lambda r: r["model"] == "gpt-4o"),
        (("--task", "mmlu", "--model", "big"), lambda r: r["task"] == "mmlu" and r["model"] == "big"),
        (("--task", "-"), lambda r: r["task"] is None),
        (("--status", "503"), lambda r: r["status"] == 503),
        (("--status", "5xx"), lambda r: r["status"] >= 500),
        (("--status", "upstream_error"), lambda r: (r["error"] or {}).get("code") == "upstream_error"),
        (("--status", "ok"), lambda r: r["status"] == 200 and not r["error"]),
        (("--grep", "QUESTION 17"), lambda r: "question 17" in r["request"]["prompt"].lower()),
        (("--grep", " 398"), lambda r: " 398" in answer(r) or " 398" in r["request"]["prompt"]),
    ],
)
def test_log_equals_a_recount_of_the_raw_jsonl_newest_first(store: Path, args: tuple, keep) -> None:  # type: ignore[no-untyped-def]
    want = [r for r in raw_records(store) if keep(r)]
    got = log(store, *args)
    assert want, "the filter must keep something to prove anything"
    assert len(got) == len(want)
    assert [r["key"] + str(r["ts"]) for r in got] == newest_first(want)


def test_a_text_search_finds_hits_by_the_answer_they_refer_to(store: Path) -> None:
    referring = [r for r in raw_records(store) if r.get("response_ref")]
    target = answer(referring[0]).strip()
    got = log(store, "--grep", f" {target}", "--served", "hit")
    assert any(r.get("response_ref") == referring[0]["response_ref"] for r in got)


def test_pages_cover_every_match_once_in_order(store: Path) -> None:
    run = RunLog(store, RUN)
    where = LogFilter(status=("ok",))
    everything = [e.locator for e in run.entries(where)]
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        page, cursor = run.page(where, cursor, limit=97)
        seen += [e.locator for e in page]
        if cursor is None:
            break
        cursor = Cursor.decode(cursor.encode())  # as a URL carries it
    assert seen == everything and len(set(seen)) == len(seen)
    assert run.read(seen[5]).record == next(e.record for e in run.entries(where) if e.locator == seen[5])


def test_table_and_json_carry_the_same_records(store: Path) -> None:
    args = ["log", RUN, "--model", "big", "--limit", "7", "--cache-dir", str(store)]
    table = CliRunner().invoke(main, args).output.splitlines()
    data = json.loads(CliRunner().invoke(main, [*args, "--format", "json"]).output)
    assert len(table) == 2 + 7 and len(data) == 7
    for line, record in zip(table[2:], data, strict=True):
        assert record["key"][:12] in line and "big" in line


def test_an_unknown_run_is_one_line_and_exit_2(store: Path) -> None:
    result = CliRunner().invoke(main, ["log", "nobody", "--cache-dir", str(store)])
    assert result.exit_code == 2 and "nobody" in result.output


def test_lines_and_blocks_read_backwards_equal_a_forward_split_at_any_block_size(tmp_path: Path) -> None:
    import random

    from cache.reverse import blocks_backwards, lines_backwards

    for trial in range(200):
        rng = random.Random(trial)
        lines = [b"x" * rng.randint(0, 40) + b"\n" for _ in range(rng.randint(0, 30))]
        data = b"".join(lines)
        path = tmp_path / f"{trial}.jsonl"
        path.write_bytes(data + (b"torn" if trial % 3 == 0 else b""))  # a torn last line is never read
        block = rng.randint(1, 64)
        offsets = [sum(map(len, lines[:i])) for i in range(len(lines))]
        assert list(lines_backwards(path, block=block)) == list(zip(offsets, lines, strict=True))[::-1]
        blocks = list(blocks_backwards(path, block=block))
        assert b"".join(b[first:] for _, b, first in reversed(blocks)) == data
        assert all(data[pos : pos + len(b)] == b and b.endswith(b"\n") for pos, b, _ in blocks)
        assert all(first == 0 or b[first - 1 : first] == b"\n" for _, b, first in blocks)


@pytest.mark.parametrize("grep", ["QUESTION 17", " 398", "again"])
def test_a_text_search_over_small_blocks_equals_a_recount(
    store: Path, grep: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.report.log as log_module

    monkeypatch.setattr(log_module, "SEARCH_BLOCK", 700)  # about a line: matches and hits at every block edge
    needle = grep.lower()
    want = [r for r in raw_records(store) if needle in (r["request"]["prompt"] + "\n" + answer(r)).lower()]
    got = [e.record for e in RunLog(store, RUN).entries(LogFilter(grep=grep))]
    assert want and len(got) == len(want)
    assert [r["key"] + str(r["ts"]) for r in got] == newest_first(want)
