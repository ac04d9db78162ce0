"""The miss path, A/B: gateways from several checkouts in front of one stand-in, in one run.

    .venv/bin/python benchmarks/bench_miss.py [--gateway base=/tmp/old-checkout] [--reps 5]

Every target (the stand-in called directly, this checkout's ``gateway serve``
and any ``--gateway NAME=PATH`` checkout, each on a fresh cache dir) gets wrk
runs of all-miss load in turn, round after round, so a noisy shared machine
hits them alike; medians are quoted. Reported per target: CPU per miss at 16
connections (the server process, from /proc), misses/s at 16 connections, p50
at 1 connection and what it adds over the stand-in direct, and where the
gateway's CPU went by thread (from /proc/<pid>/task/*/stat). Figures are
reported, never asserted (see TARGETS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench_gateway import (
    CLOCK_TICKS,
    HERE,
    ROOT,
    Sample,
    Server,
    ensure_wrk,
    free_port,
    gateway_command,
    gateway_config,
    launch,
    run_wrk,
    servers_stopped,
)


def thread_cpu(server: Server) -> dict[str, float]:
    """CPU seconds so far of the server's event-loop thread ("main") and of each other thread (by id)."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{server.process.pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        # Python 3.11 does not name OS threads: tell them apart by id.
        name = "main" if int(task.name) == server.process.pid else f"thread {task.name}"
        fields = stat.rsplit(")", 1)[1].split()
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description="Miss-path A/B of gateway checkouts, one run.")
    parser.add_argument(
        "--gateway", action="append", default=[], metavar="NAME=PATH", help="another checkout"
    )
    parser.add_argument("--reps", type=int, default=5, help="rounds over every target")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    args = parser.parse_args()
    roots = [("gateway", ROOT), *((n, Path(p)) for n, p in (g.split("=", 1) for g in args.gateway))]
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="replaygate-miss-"))
    servers: list[Server] = []
    samples: dict[tuple[str, int], list[Sample]] = {}
    threads: dict[str, dict[str, float]] = {}
    print(f"load average before {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with servers_stopped(servers):
        sport = free_port()
        cmd = [sys.executable, str(HERE / "standin_upstream.py"), "--port", str(sport)]
        servers.append(launch("direct", cmd, sport, "/v1/models", tmp / "standin.log"))
        config = gateway_config(tmp / "gateway.yaml", sport)
        for name, root in roots:
            port = free_port()
            command = gateway_command(config, tmp / f"cache-{name}", port)
            env = {"PYTHONPATH": str(root)}
            servers.append(launch(name, command, port, "/healthz", tmp / f"{name}.log", env))
        for rep in range(args.reps):
            for connections in (1, 16):
                for server in servers:
                    run_wrk(wrk, server, "distinct", connections, 1, sport)  # warm-up
                    before = thread_cpu(server)
                    sample = run_wrk(wrk, server, "distinct", connections, args.duration, sport)
                    after = thread_cpu(server)
                    samples.setdefault((server.name, connections), []).append(sample)
                    if connections == 16:
                        mine = threads.setdefault(server.name, {})
                        for thread, seconds in after.items():
                            per_miss = (seconds - before.get(thread, 0.0)) * 1e6 / max(sample.requests, 1)
                            mine[thread] = mine.get(thread, 0.0) + per_miss / args.reps
                    print(
                        f"round {rep + 1} c{connections:<2} {server.name:10s} {sample.rps:8,.0f} req/s "
                        f"errors {sample.errors} "
                        f"p50 {sample.p50_ms:5.2f} ms cpu {sample.cpu_us_per_req:6,.0f} µs",
                        file=sys.stderr,
                    )
    load_after = os.getloadavg()[0]

    def med(name: str, connections: int, pick: str) -> float:
        return statistics.median(getattr(s, pick) for s in samples[(name, connections)])

    direct_p50 = med("direct", 1, "p50_ms")
    print(f"\nmedians of {args.reps} rounds, {args.duration} s each; load average after {load_after:.2f}\n")
    print("| | CPU µs/miss, 16 conn. | misses/s, 16 conn. | p50 ms, 1 conn. | p50 ms added |")
    print("|---|---|---|---|---|")
    for server in servers:
        n = server.name
        added = "—" if n == "direct" else f"{med(n, 1, 'p50_ms') - direct_p50:.2f}"
        print(
            f"| {n} | {med(n, 16, 'cpu_us_per_req'):,.0f} | {med(n, 16, 'rps'):,.0f} | "
            f"{med(n, 1, 'p50_ms'):.2f} | {added} |"
        )
    print("\nmean CPU µs per miss by thread, 16 connections:")
    for name, by_thread in threads.items():
        shown = ", ".join(
            f"{t} {us:,.0f}" for t, us in sorted(by_thread.items(), key=lambda i: -i[1]) if us >= 1
        )
        print(f"  {name}: {shown}")


if __name__ == "__main__":
    main()
