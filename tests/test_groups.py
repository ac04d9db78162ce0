"""Groups: a group file expands to its leaf tasks (by name, tag or subgroup) and aggregates as lm-eval does.

The oracle for the numbers is lm-eval's own ``aggregate_subtask_metrics``, ``pooled_sample_stderr``
and ``unweighted_mean_stderr``, on subtasks of unequal sizes (where weighting matters).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scorer.errors import BadInput
from scorer.groups import GroupConfig, group_results, resolve_selection
from tests.test_lmeval import TASK_DIR

RESULTS = {
    "a": {
        "sample_len": 10,
        "acc,none": 0.5,
        "acc_stderr,none": 0.16,
        "f1,none": 0.3,
        "f1_stderr,none": "N/A",
    },
    "b": {"sample_len": 30, "acc,none": 0.8, "acc_stderr,none": 0.07},
    "c": {"sample_len": 5, "acc,none": 0.2, "acc_stderr,none": 0.2},
}


def _group(name: str, children: list[str], weight_by_size: bool = True) -> dict:  # type: ignore[type-arg]
    aggregate = [{"metric": "acc", "filter_list": None, "weight_by_size": weight_by_size}]
    return GroupConfig.from_dict(
        {"name": name, "alias": None, "children": children, "aggregate": aggregate, "version": 1}
    ).to_dict()


@pytest.mark.parametrize("weight_by_size", [True, False])
def test_a_nested_group_aggregates_its_leaves_as_lm_eval(weight_by_size: bool) -> None:
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr, unweighted_mean_stderr

    groups = {
        "inner": GroupConfig.from_dict(_group("inner", ["a", "b"], weight_by_size)),
        "outer": GroupConfig.from_dict(_group("outer", ["inner", "c"], weight_by_size)),
    }
    out = group_results(groups, RESULTS)

    assert list(out) == ["inner", "outer"]  # children before parents
    leaves = [RESULTS[n] for n in ("a", "b", "c")]
    values, sizes = [r["acc,none"] for r in leaves], [r["sample_len"] for r in leaves]
    stderrs = [r["acc_stderr,none"] for r in leaves]
    assert out["outer"]["acc,none"] == aggregate_subtask_metrics(values, sizes, weight_by_size)
    expected = pooled_sample_stderr(stderrs, sizes) if weight_by_size else unweighted_mean_stderr(stderrs)
    assert out["outer"]["acc_stderr,none"] == pytest.approx(float(expected), rel=1e-15)
    assert out["outer"]["sample_len"] == 45
    assert out["outer"]["sample_count"] == {"acc,none": 45}
    assert "f1,none" not in out["outer"]  # not in aggregate_metric_list


def test_a_missing_stderr_in_a_child_gives_the_group_none() -> None:
    groups = {"g": GroupConfig("g", None, ["a", "b"], [GroupConfig.from_dict(_group("x", [])).aggregate[0]])}
    results = {**RESULTS, "b": {**RESULTS["b"], "acc_stderr,none": "N/A"}}
    assert group_results(groups, results)["g"]["acc_stderr,none"] == "N/A"


def test_a_group_file_names_tasks_tags_and_groups(tmp_path: Path) -> None:
    (tmp_path / "t1.yaml").write_text(
        (TASK_DIR / "replaygate_capitals.yaml")
        .read_text()
        .replace("task: replaygate_capitals", "task: t1\ntag: [caps]")
        .replace("replaygate_capitals.jsonl", str(TASK_DIR / "replaygate_capitals.jsonl"))
    )
    (tmp_path / "g.yaml").write_text("group: g\ntask: [caps, replaygate_pair]\n")
    selection = resolve_selection("g", [TASK_DIR, tmp_path])
    assert [t.name for t in selection.tasks] == ["t1", "replaygate_capitals", "replaygate_capitals_2shot"]
    assert selection.groups["g"].children == ["t1", "replaygate_pair"]
    assert selection.groups["replaygate_pair"].aggregate[1].weight_by_size is False


def test_an_inline_task_in_a_group_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("group: g\ntask:\n  - task: x\n    dataset_path: json\n")
    with pytest.raises(BadInput, match=r"g\.yaml \(group g\): task\[0\] is a mapping"):
        resolve_selection("g", [tmp_path])
