"""``pass@k``: the chance that at least one of k samples passes the task's tests, run in the sandbox.

Per document, with n samples of which c pass, the unbiased estimator
``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021); averaged over documents. The
program run is ``doc[prompt] + answer + doc[test] + check(doc[entry_point])``,
as HumanEval defines it.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import comb
from typing import Any

from scorer.metrics.base import Sample, register_metric
from scorer.sandbox import run_program


def estimate(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c passing."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


@register_metric(
    "pass@k",
    output_types={"generate_until"},
    options={"k", "timeout_s", "memory_mb"},
    report_as=lambda options: f"pass@{options.get('k', 1)}",
)
def pass_at_k(sample: Sample, options: Mapping[str, Any]) -> float:
    """pass@k of this document's samples."""
    doc = sample.doc
    k = int(options.get("k", 1))
    passes = 0
    for answer in sample.predictions:
        program = f"{doc['prompt']}{answer}\n{doc['test']}\ncheck({doc['entry_point']})\n"
        outcome = run_program(
            program, float(options.get("timeout_s", 5.0)), int(options.get("memory_mb", 512))
        )
        passes += outcome.passed
    return estimate(len(sample.predictions), passes, k) if len(sample.predictions) >= k else 0.0
