"""The pass@k sandbox: code that loops, forks, eats memory or opens a socket is stopped and fails."""

from __future__ import annotations

import pytest

from scorer.metrics import Sample, get_metric
from scorer.metrics.pass_at_k import estimate
from scorer.sandbox import run_program


def test_a_correct_program_passes() -> None:
    assert run_program("assert sum([1, 2]) == 3\n").passed


@pytest.mark.parametrize(
    "source",
    [
        "while True:\n    pass\n",
        "import os\nos.fork()\n",
        "import subprocess\nsubprocess.run(['true'])\n",
        "x = bytearray(2 * 1024 ** 3)\n",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
        "import socket\nsocket.socket()\n",
        "raise SystemExit(3)\n",
    ],
    ids=["loops", "forks", "spawns", "eats-memory", "connects", "opens-socket", "exits-nonzero"],
)
def test_misbehaving_programs_are_stopped_and_fail(source: str) -> None:
    outcome = run_program(source, timeout_s=1.0, memory_mb=256)
    assert not outcome.passed, outcome


def test_pass_at_k_scores_humaneval_style_programs() -> None:
    metric = get_metric("pass@k")
    assert metric is not None
    doc = {
        "prompt": "def add(a, b):\n",
        "test": "def check(f):\n    assert f(2, 3) == 5\n",
        "entry_point": "add",
    }
    good, bad = "    return a + b\n", "    while True:\n        pass\n"
    sample = Sample(doc, None, [good, bad])
    assert metric.per_sample(sample, {"k": 1, "timeout_s": 1.0}) == pytest.approx(0.5)
    assert metric.per_sample(sample, {"k": 2, "timeout_s": 1.0}) == 1.0
    assert metric.reported_name({"k": 2}) == "pass@2"


def test_the_estimator_matches_its_closed_form() -> None:
    assert estimate(10, 0, 1) == 0.0
    assert estimate(10, 10, 5) == 1.0
    assert estimate(5, 2, 1) == pytest.approx(0.4)
