"""Run lm-evaluation-harness's local-completions model on local tasks and write what it scored as JSON.

Run as its own process (``python tests/lmeval_runner.py BASE_URL TASK_DIR OUT [--num-concurrent=N] TASK...``)
from TASK_DIR (N defaults to 8; 1 is lm-eval's default, sequential path):
Hugging Face datasets resolves a task's relative ``data_files`` against the working directory. It
uses the Python API with only the local tasks indexed (~1 s) instead of the CLI, which indexes all
of lm-eval's built-in tasks first (~7 s).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def run(base_url: str, task_dir: str, tasks: list[str], num_concurrent: int = 8) -> dict[str, Any]:
    """Evaluate ``tasks`` (found in ``task_dir``) through ``base_url``; return the results and responses.

    Args:
        base_url: the full completions URL lm-eval posts to, e.g. ``…/runs/R/v1/completions``.
        task_dir: the folder holding the task YAML files.
        tasks: task names to run.
        num_concurrent: parallel requests, as a user would pass in ``model_args``.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    output = simple_evaluate(
        model="local-completions",
        model_args=f"model=smollm2,base_url={base_url},num_concurrent={num_concurrent}",
        tasks=list(tasks),
        task_manager=TaskManager(include_path=task_dir, include_defaults=False),
        log_samples=True,
    )
    assert output is not None
    kept = ("doc_id", "resps", "filtered_resps")  # what the model answered, not lm-eval's bookkeeping
    samples = {task: [{k: row[k] for k in kept} for row in rows] for task, rows in output["samples"].items()}
    shapes = ("groups", "group_subtasks", "versions", "n-shot", "higher_is_better")
    return {"results": output["results"], "samples": samples, **{k: output[k] for k in shapes if k in output}}


if __name__ == "__main__":
    url, directory, out, *names = sys.argv[1:]
    concurrent = 8
    if names and names[0].startswith("--num-concurrent="):
        concurrent = int(names.pop(0).split("=", 1)[1])
    results = run(url, directory, names, concurrent)
    Path(out).write_text(json.dumps(results, sort_keys=True, default=str))
