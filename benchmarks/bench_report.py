"""`gateway report` over a large synthetic run: peak memory (ru_maxrss) and wall time, in a subprocess.

    .venv/bin/python -m benchmarks.bench_report --records 1000000

Writes a synthetic run (realistic record shapes: requests, responses, usage,
costs, a mix of hits, misses, coalesced and errors, three models, four tasks,
an hour of timestamps) with orjson, then times `gateway report RUN --format F`
for each format in a fresh process that reports its own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

MODELS = (
    ("smollm2", "openai-compatible", 0.0, 0.0),
    ("gpt-4o", "litellm", 2.5e-6, 1e-5),
    ("big", "litellm", 3e-6, 1.5e-5),
)
TASKS = ("arith", "capitals", "mmlu", None)
SERVED = ("miss",) * 3 + ("hit",) * 6 + ("coalesced",)


def synthetic_records(n: int, seed: int = 0, start: float = 1_790_000_000.0) -> Any:
    """``n`` records shaped like the gateway's, deterministic for ``seed``."""
    rng = random.Random(seed)
    for i in range(n):
        model, provider, p_in, p_out = MODELS[i % len(MODELS)]
        served = SERVED[rng.randrange(len(SERVED))]
        failed = served == "miss" and rng.random() < 0.05
        prompt, completion = rng.randint(20, 400), rng.randint(1, 64)
        ts = start + i * 3600.0 / n
        latency = rng.lognormvariate(-1.6, 0.4) if served == "hit" else rng.lognormvariate(5.5, 0.8)
        cost = round(prompt * p_in + completion * p_out, 9)
        task = TASKS[i % len(TASKS)]
        yield {
            "schema": 1,
            "key": f"{i:064x}",
            "run_id": "synthetic",
            "ts": ts,
            "ts_end": ts + latency / 1000,
            "latency_ms": round(latency, 3),
            "endpoint": "/v1/completions",
            "model": model,
            "upstream_model": model,
            "provider": provider,
            "served": served,
            "stream": False,
            "cacheable": True,
            "status": 503 if failed else 200,
            "request": {"model": model, "prompt": f"Question {i}: what is {i} + {i}?", "max_tokens": 64},
            "response": None
            if failed
            else {
                "id": f"cmpl-{i}",
                "object": "text_completion",
                "choices": [{"index": 0, "text": f" {2 * i}", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
            },
            "usage": None if failed else {"prompt_tokens": prompt, "completion_tokens": completion},
            "attempts": 2 if failed else (1 if served == "miss" else 0),
            "failed_attempts": [{"status": 503, "code": "upstream_error", "message": "busy", "ms": 3.0}] * 2
            if failed
            else [],
            "error": {"message": "busy", "type": "upstream_error", "code": "upstream_error"}
            if failed
            else None,
            "task": task,
            "ttft_ms": None,
            "cost_usd": 0.0 if failed or served != "miss" else cost,
            "cost_saved_usd": cost if served in ("hit", "coalesced") else 0.0,
        }


def synthesize(cache_dir: Path, run_id: str, n: int, seed: int = 0) -> Path:
    """Write ``n`` synthetic records as one shard of ``run_id``; returns the shard."""
    folder = cache_dir / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    shard = folder / "0000000000000-synthetic-0.jsonl"
    dumps = orjson.dumps
    with shard.open("wb") as out:
        batch: list[bytes] = []
        for record in synthetic_records(n, seed):
            batch.append(dumps(record))
            if len(batch) == 10_000:
                out.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            out.write(b"\n".join(batch) + b"\n")
    return shard


def measure(cache_dir: Path, run_id: str, fmt: str = "json", by: str = "model") -> dict[str, Any]:
    """Run `gateway report` in a fresh process; its peak RSS (MB), wall time and output."""
    out = Path(tempfile.mkdtemp()) / f"report.{fmt}"
    args = [
        sys.executable,
        "-m",
        "benchmarks.bench_report",
        "--child",
        str(cache_dir),
        run_id,
        fmt,
        by,
        str(out),
    ]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    seconds = time.perf_counter() - started
    return {"format": fmt, "by": by, "seconds": round(seconds, 2), **json.loads(done.stdout), "output": out}


def _child(cache_dir: str, run_id: str, fmt: str, by: str, out: str) -> None:
    from gateway.cli import main

    main(
        ["report", run_id, "--format", fmt, "--by", by, "--cache-dir", cache_dir, "-o", out],
        standalone_mode=False,
    )
    print(json.dumps({"peak_mb": round(peak_rss_kb() / 1024, 1)}))


def peak_rss_kb() -> int:
    """This process's peak resident memory in kB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and
    exec, so a child of a big parent (pytest) would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    """Synthesize a run and report on it in every format."""
    if sys.argv[1:2] == ["--child"]:
        _child(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--formats", default="json,table,html")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep the synthetic run here")
    ns = parser.parse_args()
    cache_dir = ns.cache_dir or Path(tempfile.mkdtemp())
    started = time.perf_counter()
    shard = synthesize(cache_dir, "synthetic", ns.records)
    print(
        f"wrote {ns.records:,} records ({shard.stat().st_size / 1e6:,.0f} MB) "
        f"in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    print("| format | records | peak RSS (MB) | wall time (s) |")
    print("|---|---|---|---|")
    for fmt in ns.formats.split(","):
        result = measure(cache_dir, "synthetic", fmt)
        print(f"| {fmt} | {ns.records:,} | {result['peak_mb']} | {result['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
