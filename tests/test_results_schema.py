"""The results JSON has lm-eval's top-level keys and shapes, and its bootstrap resample counts.

lm-eval 0.4's own code is the oracle: the key set its ``simple_evaluate`` and ``EvaluationTracker``
write, and its ``bootstrap_stderr`` for a corpus metric with 100 resamples (its cap for bleu).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scorer.replay import score_run
from scorer.stderr import DEFAULT_BOOTSTRAP_ITERS, bootstrap_iters_for, bootstrap_stderr
from tests.scorer_synthetic import generate_task, write_run

# simple_evaluate (evaluator.py) + add_env_info (loggers/utils.py) + the tracker's timing key
LMEVAL_TOP_LEVEL = {
    "results",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "config",
    "git_hash",
    "date",
    "pretty_env_info",
    "transformers_version",
    "lm_eval_version",
    "upper_git_hash",
    "total_evaluation_time_seconds",
}


def test_results_carry_lm_evals_top_level_keys_with_its_shapes(tmp_path: Path) -> None:
    task = generate_task()
    docs = [{"q": f"{i} + 0", "a": str(i)} for i in range(5)]
    write_run(tmp_path, "schema", task, docs, lambda i, doc: doc["a"] if i % 2 else "no")

    document = score_run(tmp_path, "schema").document

    assert LMEVAL_TOP_LEVEL <= set(document)
    entry = document["results"]["synthetic"]
    assert (entry["name"], entry["alias"], entry["sample_len"]) == ("synthetic", "synthetic", 5)
    assert entry["exact_match,num"] == 0.4
    config = document["config"]
    assert isinstance(config["model_args"], dict) and config["model_args"]["model"] == "smollm2"
    assert config["bootstrap_iters"] == DEFAULT_BOOTSTRAP_ITERS == 100000
    assert {"random_seed", "numpy_seed", "torch_seed", "fewshot_seed", "limit", "gen_kwargs"} <= set(config)
    assert isinstance(document["total_evaluation_time_seconds"], str)
    float(document["total_evaluation_time_seconds"])


def test_bleu_family_stderr_uses_lm_evals_100_resamples_other_metrics_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")  # lm-eval's in-process path: same draws, no pool
    from lm_eval.api.metrics import bleu, mean
    from lm_eval.api.metrics import bootstrap_stderr as lm_bootstrap

    items = [("the cat sat", "the cat sat"), ("a dog ran", "a dog walked"), ("hello there", "hi there")]
    iters = bootstrap_iters_for("bleu", DEFAULT_BOOTSTRAP_ITERS)
    assert iters == 100
    assert bootstrap_stderr(bleu, items, iters) == lm_bootstrap(bleu, items, iters=100)
    assert bootstrap_iters_for("perplexity", DEFAULT_BOOTSTRAP_ITERS) == DEFAULT_BOOTSTRAP_ITERS
    assert bootstrap_stderr(mean, [1.0, 0.0, 1.0], 2000) == lm_bootstrap(mean, [1.0, 0.0, 1.0], iters=2000)
