"""`scorer score` throughput and peak memory on a synthetic run of cached responses.

Writes a run of N generate_until samples (one cached completion and one cached /tokenize answer
each) into a fresh store, then times `scorer score RUN` as a user runs it (a child process, so
the time includes start-up) and reads the child's peak resident memory.

    .venv/bin/python benchmarks/bench_scorer.py --samples 100000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.scorer_synthetic import generate_task, write_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="default: a temporary folder; a run already there is reused",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.cache_dir or Path(tmp) / "store"
        docs = [{"q": f"{i} + 1", "a": str(i + 1)} for i in range(args.samples)]
        started = time.perf_counter()
        if (store / "runs" / "bench" / "scorer" / "manifest.json").exists():
            print(f"reusing the run in {store}", file=sys.stderr)  # --samples must match how it was made
        else:
            # every third answer wrong, so exact_match is 2/3
            write_run(store, "bench", generate_task(), docs, lambda i, d: f" {d['a'] if i % 3 else 'x'}")
            print(f"wrote {args.samples} samples in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "scorer", "score", "bench", "--cache-dir", str(store)],
            stdout=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own usage, not every child's so far
        child.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        if child.returncode != 0:
            raise SystemExit(f"scorer score failed with exit code {child.returncode}")
        peak_mib = usage.ru_maxrss / 1024
        cpu = usage.ru_utime + usage.ru_stime  # what the machine's other tenants cannot inflate
        rate = args.samples / elapsed
        print(f"scorer score: {args.samples} samples in {elapsed:.2f}s = {rate:,.0f} samples/s, ", end="")
        print(f"CPU {cpu:.2f}s = {args.samples / cpu:,.0f} samples per CPU-second, ", end="")
        print(f"peak RSS {peak_mib:.0f} MiB, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
