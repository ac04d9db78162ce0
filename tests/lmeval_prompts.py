"""Write the request arguments lm-evaluation-harness builds for local tasks, without any model.

Run as its own process (``python tests/lmeval_prompts.py TASK_DIR OUT SEED TASK[:K]...``) with Hugging
Face offline: it loads each task with lm-eval's own ``TaskManager`` (only ``TASK_DIR`` indexed), sets
``num_fewshot`` to ``K`` when given as ``simple_evaluate(num_fewshot=K)`` does (not when the file
says 0), seeds its few-shot
sampler as ``simple_evaluate`` does, and builds every request. ``OUT`` gets, per task (keyed as given,
``:K`` included), one ``[doc_id, arguments]`` pair per request in lm-eval's order (``arguments`` is
``[context, continuation]`` for loglikelihood, ``[context, gen_kwargs]`` for generation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def prompts(task_dir: str, seed: int, names: list[str]) -> dict[str, list[Any]]:
    """Each task's requests as lm-eval builds them for few-shot seed ``seed`` (``NAME:K``: ``K``-shot)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    wanted = [name.partition(":") for name in names]
    tasks = get_task_dict(
        [task for task, _, _ in wanted], TaskManager(include_path=task_dir, include_defaults=False)
    )
    written_in = {name: tasks[name].get_config("num_fewshot") for name in tasks}  # before any is set
    out: dict[str, list[Any]] = {}
    for (name, _, shots), key in zip(wanted, names, strict=True):
        task = tasks[name]
        written = written_in[name]
        if shots and written != 0:  # simple_evaluate's rule: a task file's own 0 is never overridden
            task.set_config(key="num_fewshot", value=int(shots))
        else:
            task.set_config(key="num_fewshot", value=0 if written is None else written)
        task.set_fewshot_seed(seed=seed)
        task.build_all_requests()
        out[key] = [[inst.doc_id, list(inst.arguments)] for inst in task.instances]
    return out


if __name__ == "__main__":
    directory, target, seed_text, *tasks = sys.argv[1:]
    Path(target).write_text(json.dumps(prompts(directory, int(seed_text), tasks), default=str))
