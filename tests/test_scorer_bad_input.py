"""Bad input: one clear line saying what and where, exit code 2, and nothing in the run folder changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cache.runs import run_dir
from tests.scorer_fixtures import scorer, tree_snapshot
from tests.scorer_synthetic import generate_task, write_run

GOOD_TASK = {
    "task": "t",
    "dataset": {"path": "json", "data_files": {"test": "docs.jsonl"}},
    "eval_split": "test",
    "doc_to_text": "Q: {{q}}\nA:",
    "doc_to_target": "{{a}}",
    "metric_list": [{"metric": "exact_match"}],
}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store holding one synthetic run, ``r``, whose answers are all right."""
    docs = [{"q": f"{i} + 1", "a": str(i + 1)} for i in range(5)]
    write_run(tmp_path / "store", "r", generate_task(), docs, lambda i, doc: f" {doc['a']}")
    return tmp_path / "store"


def one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("scorer: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def task_file(tmp_path: Path, **changes: object) -> Path:
    data = {**GOOD_TASK, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    (tmp_path / "docs.jsonl").write_text('{"q": "1 + 1", "a": "2"}\n')
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"doc_to_text": None}, ["task.yaml", "missing required field 'doc_to_text'"]),
        ({"metric_list": [{"metric": "exact_matchh"}]}, ["task.yaml", "metric_list[0]", "unknown metric"]),
        ({"doc_to_text": "Q: {{ q }\nA:"}, ["task.yaml", "doc_to_text", "broken Jinja template"]),
        (
            {"filter_list": [{"name": "x", "filter": [{"function": "regex", "regex_pattern": "(["}]}]},
            ["task.yaml", "filter_list[0].filter[0]", "regex does not compile"],
        ),
    ],
    ids=["missing-field", "unknown-metric", "broken-template", "bad-regex"],
)
async def test_a_bad_task_file_is_one_line_exit_2_and_changes_nothing(
    store: Path, tmp_path: Path, changes: dict[str, object], needles: list[str]
) -> None:
    before = tree_snapshot(store)
    args = [
        "--model",
        "smollm2",
        "--gateway",
        "http://127.0.0.1:9",
        "--run-id",
        "r",
        "--cache-dir",
        str(store),
    ]
    outcome = await scorer("run", str(task_file(tmp_path, **changes)), *args)
    assert outcome.code == 2
    one_line_error(outcome.stderr, *needles)
    assert tree_snapshot(store) == before


async def test_an_unknown_run_id_is_one_line_exit_2(store: Path) -> None:
    outcome = await scorer("score", "no-such-run", "--cache-dir", str(store))
    assert outcome.code == 2
    one_line_error(outcome.stderr, "unknown run-id 'no-such-run'")
    assert not run_dir(store, "no-such-run").exists()


async def test_a_manifest_from_a_newer_version_is_refused_and_left_alone(store: Path) -> None:
    manifest = run_dir(store, "r") / "scorer" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "schema": 99}))
    before = tree_snapshot(store)
    outcome = await scorer("score", "r", "--cache-dir", str(store))
    assert outcome.code == 2
    one_line_error(outcome.stderr, "manifest.json", "schema 99 is newer")
    assert tree_snapshot(store) == before


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ('{"metric_list": [{"metric": "bleu_score"}]}', ["--config", "unknown metric 'bleu_score'"]),
        (
            '{"filter_list": [{"name": "n", "filter": [{"function": "regex", "regex_pattern": "(\\\\d+"}]}]}',
            ["--config", "regex does not compile"],
        ),
        ('{"doc_to_target": "{{ a"}', ["--config", "doc_to_target", "broken Jinja template"]),
    ],
    ids=["unknown-metric", "bad-regex", "broken-template"],
)
async def test_bad_overrides_are_one_line_exit_2_and_change_nothing(
    store: Path, override: str, needles: list[str]
) -> None:
    before = tree_snapshot(store)
    outcome = await scorer("score", "r", "--cache-dir", str(store), "--config", override)
    assert outcome.code == 2
    one_line_error(outcome.stderr, *needles)
    assert tree_snapshot(store) == before


async def test_a_missing_response_is_reported_by_count_not_scored_as_empty(store: Path) -> None:
    # Score a different prompt template: its requests were never made, so no answer is cached.
    before = tree_snapshot(run_dir(store, "r"))
    outcome = await scorer("score", "r", "--cache-dir", str(store), "--config", '{"doc_to_text": "{{q}} ="}')
    assert outcome.code == 1
    assert "5 response(s) missing" in outcome.stderr, outcome.stderr
    assert tree_snapshot(run_dir(store, "r")) == before


async def test_the_synthetic_run_scores_when_nothing_is_wrong(store: Path) -> None:
    outcome = await scorer("score", "r", "--cache-dir", str(store), "--json")
    assert outcome.code == 0, outcome.stderr
    assert json.loads(outcome.stdout)["results"]["synthetic"]["exact_match,num"] == 1.0
