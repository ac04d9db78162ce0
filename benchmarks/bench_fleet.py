"""One process vs ``serve --workers 2``, local state vs Redis state, cache hits and misses, side by side.

    .venv/bin/python benchmarks/bench_fleet.py [--reps 5] [--duration 3] [--write-readme]

Four gateways in front of one stand-in upstream (``standin_upstream.py``):
the local backend and the Redis backend (a ``redis-server`` this benchmark
starts on a free port, as the tests do), each as one process and as
``--workers 2``. wrk (one thread, ``wrk_post.lua``) drives every gateway in
turn at 16 connections with all-identical bodies (hits) and with a new prompt
per request (misses); the whole round repeats and medians are quoted, ratios
being medians of per-round ratios. Redis commands and round trips per request
are read from ``INFO commandstats`` around each Redis run; the first hit of a
key on another process (its one Redis lookup) is counted by sequential
requests at the end. Reuses ``bench_gateway``'s processes, wrk runs and
tables, and ``bench_fleet_roundtrips``'s command accounting. Reports, never
asserts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_fleet_roundtrips import command_calls, round_trips, since, total  # noqa: E402
from benchmarks.bench_gateway import (  # noqa: E402
    CHAT,
    HIT_BODY,
    Results,
    Sample,
    Server,
    ensure_wrk,
    fmt,
    free_port,
    gateway_command,
    gateway_config,
    gateway_env,
    http_post,
    launch,
    prime,
    revision,
    run_wrk,
    servers_stopped,
    table,
    versions,
)
from tests.redis_server import RedisServer  # noqa: E402

CONNECTIONS = 16
# (scenario, wrk mode): every gateway runs both once a round.
SCENARIOS = [("hit", "same"), ("miss", "distinct")]
BACKENDS = ("local", "redis")
WORKERS = (1, 2)
SEQUENTIAL = 100  # requests one at a time: misses, then first hits on another process
README_START, README_END = "<!-- bench_fleet: start -->", "<!-- bench_fleet: end -->"


def name(backend: str, workers: int) -> str:
    return f"{backend} ×{workers}"


@dataclass
class RedisCounts:
    """Redis commands and round trips per request, by scenario and gateway, one entry per run."""

    commands: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    trips: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    # "miss", "first hit" (of a key another process paid for): commands, round trips per request
    sequential: dict[str, tuple[float, float]] = field(default_factory=dict)

    def add(self, scenario: str, target: str, calls: dict[str, int], requests: int) -> None:
        per = max(requests, 1)
        self.commands.setdefault((scenario, target), []).append(total(calls) / per)
        self.trips.setdefault((scenario, target), []).append(round_trips(calls) / per)

    def med(self, which: dict[tuple[str, str], list[float]], scenario: str, target: str) -> float | None:
        found = which.get((scenario, target))
        return statistics.median(found) if found else None


def start_gateway(
    backend: str, workers: int, tmp: Path, standin_port: int, redis: RedisServer, logs: Path
) -> Server:
    """``gateway serve`` (``--workers N`` when N > 1) on ``backend``; returns once every worker serves."""
    label = name(backend, workers)
    slug = f"{backend}{workers}"
    config = gateway_config(tmp / f"{slug}.yaml", standin_port)
    if backend == "redis":  # every Redis gateway shares one prefix: one fleet, as in production
        config.write_text(f"state: {{backend: redis, url: '{redis.url}'}}\n" + config.read_text())
    command = gateway_command(config, tmp / f"cache-{slug}", free_port())
    port = int(command[-1])
    if workers > 1:
        command += ["--workers", str(workers)]
    log = logs / f"{slug}.log"
    server = launch(label, command, port, "/healthz", log, gateway_env(None))
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("gateway: serving") < workers:  # /healthz: any one of them
        if time.monotonic() > deadline:
            server.stop()
            raise SystemExit(f"{label}: not every worker served within 60 s; see {log}")
        time.sleep(0.05)
    return server


def count_sequential(paid: Server, other: Server, redis: RedisServer, counts: RedisCounts) -> None:
    """One request at a time (nothing to batch): ``SEQUENTIAL`` new prompts on ``paid`` (misses), then
    each once on ``other`` (the first hit of a key another process paid for); their Redis commands."""
    salt = uuid.uuid4().hex[:8]
    bodies = []
    for i in range(SEQUENTIAL):
        request = json.loads(HIT_BODY)
        request["messages"][-1]["content"] = f"sequential {salt} {i}"
        bodies.append(json.dumps(request).encode())
    time.sleep(1.0)  # let the last wrk run's requests finish: their Redis commands are not these
    for kind, server in (("miss", paid), ("first hit", other)):
        before = command_calls(redis)
        served = [http_post(server.port, CHAT, body)[1].get("x-cache") for body in bodies]
        calls = since(before, command_calls(redis))
        expected = kind.split()[-1]
        if served.count(expected) != SEQUENTIAL:
            print(f"  note: {served.count(expected)} of {SEQUENTIAL} {kind}es were", file=sys.stderr)
        counts.sequential[kind] = (total(calls) / SEQUENTIAL, round_trips(calls) / SEQUENTIAL)


Verdict = tuple[str, str, bool | None]  # the target, what was measured, whether it was met


def report(results: Results, counts: RedisCounts, reps: int) -> tuple[list[str], list[Verdict]]:
    """The side-by-side table and the fleet targets' verdicts."""
    rps: Callable[[Sample], float] = lambda s: s.rps  # noqa: E731
    p50: Callable[[Sample], float] = lambda s: s.p50_ms  # noqa: E731
    cpu: Callable[[Sample], float] = lambda s: s.cpu_us_per_req  # noqa: E731
    # Whether the gateway was the bottleneck: a process near 1 core is; well under, the machine is.
    cores: Callable[[Sample], float] = lambda s: s.rps * s.cpu_us_per_req / 1e6  # noqa: E731
    l1, l2, r1, r2 = (name(b, w) for b in BACKENDS for w in WORKERS)
    header = ["", l1, l2, "local ×2 ÷ ×1", r1, r2, "redis ×2 ÷ ×1", "redis ÷ local, ×1", "redis ÷ local, ×2"]
    rows = []
    for scenario, plural in (("hit", "hits"), ("miss", "misses")):
        for title, pick, kind in (
            ("req/s", rps, "rps"),
            ("p50 ms", p50, "ms"),
            ("CPU µs/request", cpu, "us"),
            ("CPU cores busy", cores, "ms"),
        ):
            row = [f"{plural}, {title}"]
            for one, two in ((l1, l2), (r1, r2)):
                row += [
                    fmt(results.med(scenario, one, pick), kind),
                    fmt(results.med(scenario, two, pick), kind),
                ]
                row += [fmt(results.med_ratio(scenario, two, one, pick), "x")]
            of_local = "pct" if kind == "rps" else "x"
            row += [
                fmt(results.med_ratio(scenario, r, loc, pick), of_local) for r, loc in ((r1, l1), (r2, l2))
            ]
            rows.append(row)
        for title, which in (
            ("Redis commands/request", counts.commands),
            ("Redis round trips/request", counts.trips),
        ):
            per = [_num(counts.med(which, scenario, t)) for t in (r1, r2)]
            rows.append([f"{plural}, {title}", "—", "—", "", per[0], per[1], "", "", ""])
    out = [f"Medians of {reps} rounds, {CONNECTIONS} connections, wrk -t1:", "", *table(header, rows)]
    miss_seq, first_hit = counts.sequential.get("miss"), counts.sequential.get("first hit")
    if miss_seq and first_hit:
        out += [
            "",
            f"One request at a time ({SEQUENTIAL} each, so nothing shares a loop turn's MGET/MSET):",
            f"a miss on redis ×1 costs {miss_seq[0]:.2f} Redis commands in {miss_seq[1]:.2f} round trips;",
            f"the first hit of that key on redis ×2 costs {first_hit[0]:.2f} commands in {first_hit[1]:.2f}",
            "round trips.",
        ]

    verdicts: list[Verdict] = []
    for scenario, plural in (("hit", "hits"), ("miss", "misses")):
        for backend, one, two in (("local", l1, l2), ("redis", r1, r2)):
            ratio = results.med_ratio(scenario, two, one, rps)
            what = f"`--workers 2` vs one process, {plural}, {backend} backend: ≥ 1.5×"
            verdicts.append((what, fmt(ratio, "x"), None if ratio is None else ratio >= 1.5))
    for scenario, plural, most in (("hit", "hit", 1.0), ("miss", "miss", 3.0)):
        loaded = [counts.med(counts.trips, scenario, t) for t in (r1, r2)]
        alone = counts.sequential.get("first hit" if scenario == "hit" else "miss")
        found = [x for x in [*loaded, alone[1] if alone else None] if x is not None]
        shown = f"{_num(loaded[0])} (×1), {_num(loaded[1])} (×2) at 16 connections; "
        shown += f"{_num(alone[1] if alone else None)} one at a time"
        what = f"Redis round trips per {plural} ≤ {most:g}"
        verdicts.append((what, shown, max(found) <= most if found else None))
    share = results.med_ratio("hit", r1, l1, rps)
    share2 = results.med_ratio("hit", r2, l2, rps)
    both = f"{fmt(share, 'pct')} (×1), {fmt(share2, 'pct')} (×2)"
    verdicts.append(
        ("Redis hit throughput vs the local backend's: ≥ 60%", both, None if share is None else share >= 0.6)
    )
    return out, verdicts


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def write_readme(path: Path, section: list[str]) -> None:
    """Put ``section`` between the markers in the Fleet section (the first time: for its placeholder)."""
    text = path.read_text()
    block = "\n".join([README_START, *section, README_END])
    if README_START in text:
        head, rest = text.split(README_START, 1)
        text = head + block + rest.split(README_END, 1)[1]
    else:
        sentence = " Not yet measured:\none process vs `--workers 2` (local and redis) throughput"
        sentence += " for hits and misses."
        assert sentence in text, "benchmarks/README.md: the Fleet section's placeholder sentence moved"
        text = text.replace(sentence, "\n\n" + block)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="rounds over every scenario and gateway")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unrecorded load before each run")
    parser.add_argument(
        "--write-readme", action="store_true", help="write the table into benchmarks/README.md"
    )
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()

    wrk = ensure_wrk()
    loads = [os.getloadavg()[0]]
    tmp = Path(tempfile.mkdtemp(prefix="replaygate-bench-fleet-"))
    logs = tmp / "logs"
    logs.mkdir()
    redis = RedisServer(tmp)
    redis.start()
    results, counts = Results(), RedisCounts()
    servers: list[Server] = []
    print(f"work dir {tmp}; load average {loads[0]:.2f}", file=sys.stderr)
    try:
        with servers_stopped(servers):
            sport = free_port()
            command = [sys.executable, str(HERE / "standin_upstream.py"), "--port", str(sport)]
            servers.append(launch("stand-in", command, sport, "/v1/models", logs / "standin.log"))
            gateways = [start_gateway(b, w, tmp, sport, redis, logs) for b in BACKENDS for w in WORKERS]
            servers += gateways
            for server in gateways:
                if (served := prime(server)) != "hit":
                    raise SystemExit(f"{server.name}: expected X-Cache: hit after priming, got {served!r}")
            for rep in range(args.reps):
                for scenario, mode in SCENARIOS:
                    for server in gateways:
                        if args.warmup > 0:
                            run_wrk(wrk, server, mode, CONNECTIONS, args.warmup, sport)
                        before = command_calls(redis)
                        sample = run_wrk(wrk, server, mode, CONNECTIONS, args.duration, sport)
                        calls = since(before, command_calls(redis))
                        results.add(scenario, server.name, sample)
                        if server.name.startswith("redis"):
                            counts.add(scenario, server.name, calls, sample.requests)
                        if mode == "same" and sample.upstream_calls:
                            print(
                                f"  note: {server.name} sent {sample.upstream_calls} upstream",
                                file=sys.stderr,
                            )
                        print(
                            f"round {rep + 1} {scenario:4s} {server.name:8s} {sample.rps:9,.0f} req/s "
                            f"p50 {sample.p50_ms:6.2f} ms cpu {sample.cpu_us_per_req:6,.0f} µs/req "
                            f"redis {total(calls) / max(sample.requests, 1):5.2f} cmd/req "
                            f"errors {sample.errors}",
                            file=sys.stderr,
                        )
                loads.append(os.getloadavg()[0])
            count_sequential(gateways[2], gateways[3], redis, counts)
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    tables, verdicts = report(results, counts, args.reps)
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    command_line = " ".join([".venv/bin/python", str(shown), *sys.argv[1:]])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        "### One process vs `--workers 2`, local vs Redis state (`bench_fleet.py`)",
        "",
        f"    {command_line}",
        "",
        f"Measured {when} at {revision()} (from the repository root),",
        f"on {os.cpu_count()} cores, shared: load average "
        + " → ".join(f"{x:.1f}" for x in loads)
        + " (at the start, then after each round);",
        f"{versions(None)}, redis-server {redis_version()}. Each gateway runs {args.duration} s a round",
        f"after {args.warmup} s of warm-up; wrk, the stand-in and redis-server share the 2 cores with it",
        "(redis-server's CPU is not in the gateways' CPU figures). Warm hits come from each process's",
        "memory tier, so they cost Redis nothing; with `--workers 2` each worker warms its own.",
        "",
        *tables,
        "",
        "| target (TARGETS.md, fleet) | measured | verdict |",
        "|---|---|---|",
        *(
            f"| {what} | {shown} | {'—' if ok is None else ('met' if ok else 'MISSED')} |"
            for what, shown, ok in verdicts
        ),
    ]
    print("\n".join(section))
    if args.json:
        samples = {
            sc: {t: [s.__dict__ for s in ss] for t, ss in by.items()} for sc, by in results.samples.items()
        }
        args.json.write_text(json.dumps({"samples": samples, "loads": loads}, indent=1))
    if args.write_readme:
        write_readme(HERE / "README.md", section)
        print(f"wrote {HERE / 'README.md'}", file=sys.stderr)


def redis_version() -> str:
    import subprocess

    from tests.redis_server import REDIS_SERVER

    out = subprocess.run([str(REDIS_SERVER), "--version"], stdout=subprocess.PIPE, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


if __name__ == "__main__":
    main()
