"""`gateway log` / the /ui request log over a large synthetic run: time to the first page, and peak memory.

    .venv/bin/python -m benchmarks.bench_log --records 1000000

Writes the run of :mod:`benchmarks.bench_report` (or reuses one in
``--cache-dir``), then, in a fresh child process per case, reads one page of
50 with :class:`gateway.report.log.RunLog` (what ``gateway log`` and the
``/ui`` log page do) and reports the page's wall time (imports excluded) and
its CPU time and the child's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_report import peak_rss_kb, synthesize

CASES = {
    "first page": {},
    "model=big, status=5xx": {"model": ["big"], "status": ["5xx"]},
    "served=coalesced, task=mmlu": {"served": ["coalesced"], "task": ["mmlu"]},
    "text 'question 990000'": {"grep": "question 990000"},
    "text 'xylophone' (no match)": {"grep": "xylophone"},
    "second page (cursor)": {"second": True},
}


def _child(cache_dir: str, run_id: str, case: str) -> None:
    from gateway.report.log import LogFilter, RunLog, summary

    spec = dict(CASES[case])
    second = spec.pop("second", False)
    started, cpu_started = time.perf_counter(), time.process_time()
    log = RunLog(Path(cache_dir), run_id)
    where = LogFilter(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    page, cursor = log.page(where, limit=50)
    if second and cursor is not None:
        page, cursor = log.page(where, cursor, limit=50)
    rows = [summary(e, log) for e in page]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak_mb = round(peak_rss_kb() / 1024, 1)
    print(
        json.dumps(
            {"rows": len(rows), "seconds": round(seconds, 3), "cpu": round(cpu, 3), "peak_mb": peak_mb}
        )
    )


def main() -> None:
    """Synthesize a run (unless given one) and time a page of each case."""
    if sys.argv[1:2] == ["--child"]:
        _child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--cache-dir", type=Path, default=None, help="a store with run 'synthetic'")
    ns = parser.parse_args()
    cache_dir = ns.cache_dir or Path(tempfile.mkdtemp())
    if not (cache_dir / "runs" / "synthetic").is_dir():
        synthesize(cache_dir, "synthetic", ns.records)
    print("| page of 50 | rows | wall time (s) | CPU time (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|")
    for case in CASES:
        args = [sys.executable, "-m", "benchmarks.bench_log", "--child", str(cache_dir), "synthetic", case]
        root = Path(__file__).parent.parent
        done = subprocess.run(args, capture_output=True, text=True, check=True, cwd=root)
        result = json.loads(done.stdout)
        print(
            f"| {case} | {result['rows']} | {result['seconds']} | {result['cpu']} | {result['peak_mb']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
