"""Write the request arguments lm-evaluation-harness builds for local tasks, without any model.

Run as its own process (``python tests/lmeval_prompts.py TASK_DIR OUT SEED TASK...``) with Hugging Face
offline: it loads each task with lm-eval's own ``TaskManager`` (only ``TASK_DIR`` indexed), seeds its
few-shot sampler as ``simple_evaluate`` does, and builds every request. ``OUT`` gets, per task, one
``[doc_id, arguments]`` pair per request in lm-eval's order (``arguments`` is ``[context,
continuation]`` for loglikelihood, ``[context, gen_kwargs]`` for generation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def prompts(task_dir: str, seed: int, names: list[str]) -> dict[str, list[Any]]:
    """Each task's requests as lm-eval builds them for few-shot seed ``seed``."""
    from lm_eval.tasks import TaskManager, get_task_dict

    tasks = get_task_dict(names, TaskManager(include_path=task_dir, include_defaults=False))
    out: dict[str, list[Any]] = {}
    for name in names:
        task = tasks[name]
        task.set_fewshot_seed(seed=seed)
        task.build_all_requests()
        out[name] = [[inst.doc_id, list(inst.arguments)] for inst in task.instances]
    return out


if __name__ == "__main__":
    directory, target, seed_text, *tasks = sys.argv[1:]
    Path(target).write_text(json.dumps(prompts(directory, int(seed_text), tasks), default=str))
