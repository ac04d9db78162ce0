"""Gateway overhead and cache-hit speed against the same upstream called directly and LiteLLM's proxy.

One command starts, side by side on this machine: the stand-in upstream
(``standin_upstream.py``, also the aiohttp + orjson ceiling), ``gateway serve``
(the real CLI) in front of it, the same gateway under uvloop
(``uvloop_gateway.py``), and LiteLLM's proxy (1 worker, disk cache on, in its
own venv built by ``setup_litellm.sh``) in front of the same stand-in. wrk
drives the load (one thread, a Lua script for the POST bodies); every scenario
runs each target in turn, the whole round is repeated, and medians are quoted.

    .venv/bin/python benchmarks/bench_gateway.py [--reps 3] [--duration 5] [--write-readme]

Measures (see TARGETS.md): cache-hit throughput at 16 and 64 connections and
p50/p99 at 1; the miss path's p50 added over calling the stand-in directly and
the gateway's CPU per request (from /proc/<pid>/stat); start-up to a healthy
``/healthz`` and idle memory. Not part of the test suite: wall-clock numbers
are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MASTER_KEY = "sk-bench-master"
CHAT = "/v1/chat/completions"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROMPT = "What is the capital of France? Answer in one sentence."
HIT_BODY = json.dumps(
    {
        "model": "standin",
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 32,
        "temperature": 0,
    },
    separators=(",", ":"),
).encode()

# (scenario, wrk mode, connections); every target runs every scenario once a round.
SCENARIOS = [
    ("hit c1", "same", 1),
    ("hit c16", "same", 16),
    ("hit c64", "same", 64),
    ("miss c1", "distinct", 1),
    ("miss c16", "distinct", 16),
]


# -- processes -------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET on 127.0.0.1:``port``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_post(
    port: int, path: str, body: bytes, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a JSON POST on 127.0.0.1:``port``."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A server process this benchmark started, and how to reach it."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    token: str | None = None
    started_s: float = 0.0  # launch to healthy
    idle_rss_mib: float = 0.0

    def pids(self) -> list[int]:
        """The process and all its descendants (LiteLLM may fork a worker)."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    todo.extend(int(c) for c in (task / "children").read_text().split())
                except OSError:
                    pass
        return found

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the process tree."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLOCK_TICKS

    def rss_mib(self) -> float:
        """Resident memory of the process tree."""
        total_kib = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
            except OSError:
                continue
        return total_kib / 1024

    def stop(self) -> None:
        """SIGTERM the process group this benchmark started; SIGKILL it if it lingers."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def launch(
    name: str,
    command: list[str],
    port: int,
    health: str,
    log: Path,
    env: dict[str, str] | None = None,
    token: str | None = None,
    deadline_s: float = 120.0,
) -> Server:
    """Start ``command`` in its own process group and wait until ``health`` answers 200."""
    with log.open("ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            start_new_session=True,
        )
    server = Server(name, port, process, token)
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode} before it was healthy; see {log}")
        try:
            if http_get(port, health, timeout=1.0)[0] == 200:
                break
        except OSError:
            pass
        if time.perf_counter() - started > deadline_s:
            server.stop()
            raise SystemExit(f"{name} was not healthy within {deadline_s:.0f} s; see {log}")
        time.sleep(0.005)
    server.started_s = time.perf_counter() - started
    return server


def gateway_config(path: Path, upstream_port: int) -> Path:
    """A gateway config with one model on the stand-in, launching nothing."""
    path.write_text(
        "models:\n"
        "  - name: standin\n"
        "    provider: openai-compatible\n"
        f"    api_base: http://127.0.0.1:{upstream_port}/v1\n"
    )
    return path


def litellm_config(path: Path, upstream_port: int, cache_dir: Path) -> Path:
    """LiteLLM's proxy config: the same stand-in, disk cache on (as TARGETS.md says it needs)."""
    path.write_text(
        "model_list:\n"
        "  - model_name: standin\n"
        "    litellm_params:\n"
        "      model: openai/standin\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-standin\n"
        "litellm_settings:\n"
        "  cache: true\n"
        "  cache_params:\n"
        "    type: disk\n"
        f"    disk_cache_dir: {cache_dir}\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    return path


def gateway_command(config: Path, cache_dir: Path, port: int, uvloop: bool = False) -> list[str]:
    """The real ``gateway serve`` CLI (or its uvloop wrapper) for ``config``."""
    script = Path(sys.executable).parent / "gateway"
    if uvloop:
        head = [sys.executable, str(HERE / "uvloop_gateway.py")]
    elif script.exists():
        head = [str(script)]
    else:
        head = [sys.executable, "-m", "gateway.cli"]
    return [*head, "serve", "--config", str(config), "--cache-dir", str(cache_dir), "--port", str(port)]


def gateway_env(uvloop: Path | None) -> dict[str, str]:
    """Import the gateway from this checkout (whatever the venv points at), and uvloop when asked."""
    paths = [str(ROOT), *([str(uvloop)] if uvloop else []), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def uvloop_path() -> Path:
    """A private copy of uvloop for the wrapper, installed once for this Python; never in the project venv."""
    home = Path(os.environ.get("REPLAYGATE_HOME", Path.home() / ".cache" / "replaygate"))
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    target = home / f"bench-uvloop-{tag}"
    if not (target / "uvloop").is_dir():
        print(f"installing uvloop into {target} (once)", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "uvloop"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return target


def litellm_venv() -> Path:
    """LiteLLM's proxy venv, built by setup_litellm.sh when missing."""
    out = subprocess.run(
        ["bash", str(HERE / "setup_litellm.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def ensure_wrk() -> str:
    """The wrk binary, installed from Debian's packages when missing and we may."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install -y wrk)", file=sys.stderr)
        install = ["apt-get", "install", "-y", "-qq", "wrk"]
        if subprocess.run(install, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(install, check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    return found


# -- load --------------------------------------------------------------------------


@dataclass
class Sample:
    """One wrk run against one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    requests: int
    errors: int
    upstream_calls: int


def upstream_calls(standin_port: int) -> int:
    """Completions the stand-in has answered so far."""
    return int(json.loads(http_get(standin_port, "/stats")[1])["completions"])


def run_wrk(
    wrk: str, server: Server, mode: str, connections: int, duration: int, standin_port: int
) -> Sample:
    """One wrk run; CPU and upstream calls are read around it."""
    salt = uuid.uuid4().hex[:12]
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "wrk_post.lua"),
        f"http://127.0.0.1:{server.port}{CHAT}",
        "--",
        mode,
        salt,
        server.token or "",
    ]
    calls0, cpu0 = upstream_calls(standin_port), server.cpu_s()
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    cpu1, calls1 = server.cpu_s(), upstream_calls(standin_port)
    summary = json.loads(out.strip().splitlines()[-1])
    requests = int(summary["requests"])
    errors = sum(int(summary[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return Sample(
        rps=requests / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        cpu_us_per_req=(cpu1 - cpu0) * 1e6 / max(requests, 1),
        requests=requests,
        errors=errors,
        upstream_calls=calls1 - calls0,
    )


def prime(server: Server) -> str:
    """Send the hit body twice so the second (and every later) one is a hit; the second's X-Cache."""
    for _ in range(2):
        status, headers, body = http_post(server.port, CHAT, HIT_BODY, server.token)
        if status != 200:
            raise SystemExit(f"{server.name} answered {status}: {body[:300]!r}")
    return headers.get("x-cache", "")


# -- report -------------------------------------------------------------------------


@dataclass
class Results:
    """Every sample by scenario and target, and the start-up figures."""

    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    startup: dict[str, list[float]] = field(default_factory=dict)
    idle_rss: dict[str, float] = field(default_factory=dict)

    def add(self, scenario: str, target: str, sample: Sample) -> None:
        self.samples.setdefault(scenario, {}).setdefault(target, []).append(sample)

    def med(self, scenario: str, target: str, pick: Callable[[Sample], float]) -> float | None:
        found = self.samples.get(scenario, {}).get(target)
        return statistics.median(pick(s) for s in found) if found else None

    def med_ratio(
        self, scenario: str, a: str, b: str, pick: Callable[[Sample], float], diff: bool = False
    ) -> float | None:
        """Median over rounds of a/b (or a-b) taken within each round, where noise is shared."""
        xs = self.samples.get(scenario, {}).get(a)
        ys = self.samples.get(scenario, {}).get(b)
        if not xs or not ys:
            return None
        pairs = zip(xs, ys, strict=False)
        return statistics.median((pick(x) - pick(y)) if diff else pick(x) / pick(y) for x, y in pairs)


def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "rps":
        return f"{value:,.0f}"
    if kind == "ms":
        return f"{value:.2f}"
    if kind == "us":
        return f"{value:,.0f}"
    if kind == "x":
        return f"{value:.2f}×" if value < 10 else f"{value:,.0f}×"
    if kind == "pct":
        return f"{value * 100:.0f}%"
    return f"{value}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def report(results: Results, targets: list[str], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Markdown tables and the targets' verdicts."""
    ceiling, gw, uv, lite = "stand-in direct", "gateway", "gateway+uvloop", "litellm"
    shown = [t for t in (ceiling, gw, uv, lite) if t in targets]
    label = {
        ceiling: "stand-in direct (ceiling)",
        gw: "gateway",
        uv: "gateway + uvloop",
        lite: "LiteLLM proxy, disk cache",
    }
    r = results
    rps: Callable[[Sample], float] = lambda s: s.rps  # noqa: E731
    p50: Callable[[Sample], float] = lambda s: s.p50_ms  # noqa: E731
    p99: Callable[[Sample], float] = lambda s: s.p99_ms  # noqa: E731
    cpu: Callable[[Sample], float] = lambda s: s.cpu_us_per_req  # noqa: E731

    out = [f"### Cache hits (all requests identical; medians of {args.reps} rounds)", ""]
    hit_rows = [
        ("req/s, 16 connections", "hit c16", rps, "rps"),
        ("req/s, 64 connections", "hit c64", rps, "rps"),
        ("p50 ms, 1 connection", "hit c1", p50, "ms"),
        ("p99 ms, 1 connection", "hit c1", p99, "ms"),
        ("server CPU µs/request, 16 connections", "hit c16", cpu, "us"),
    ]
    header = ["", *(label[t] for t in shown)]
    ratio_cols = [(gw, ceiling, "gateway ÷ ceiling"), (gw, lite, "gateway's advantage over LiteLLM")]
    ratio_cols = [c for c in ratio_cols if c[0] in shown and c[1] in shown]
    header += [c[2] for c in ratio_cols]
    rows = []
    for title, scenario, pick, kind in hit_rows:
        row = [title, *(fmt(r.med(scenario, t, pick), kind) for t in shown)]
        for a, b, _ in ratio_cols:
            ratio = r.med_ratio(scenario, a, b, pick)
            if ratio is not None and kind != "rps" and b == lite:
                ratio = 1 / ratio  # "N× faster" reads better than a small fraction
            row.append(fmt(ratio, "pct" if kind == "rps" and b == ceiling else "x"))
        rows.append(row)
    out += table(header, rows)

    out += ["", f"### Cache misses (every prompt new; medians of {args.reps} rounds)", ""]
    miss_targets = [t for t in shown]
    rows = [
        ["p50 ms, 1 connection", *(fmt(r.med("miss c1", t, p50), "ms") for t in miss_targets)],
        ["p99 ms, 1 connection", *(fmt(r.med("miss c1", t, p99), "ms") for t in miss_targets)],
        [
            "p50 ms added over direct, 1 connection",
            *(
                "—" if t == ceiling else fmt(r.med_ratio("miss c1", t, ceiling, p50, diff=True), "ms")
                for t in miss_targets
            ),
        ],
        ["req/s, 16 connections", *(fmt(r.med("miss c16", t, rps), "rps") for t in miss_targets)],
        ["server CPU µs/request, 1 connection", *(fmt(r.med("miss c1", t, cpu), "us") for t in miss_targets)],
        [
            "server CPU µs/request, 16 connections",
            *(fmt(r.med("miss c16", t, cpu), "us") for t in miss_targets),
        ],
    ]
    out += table(["", *(label[t] for t in miss_targets)], rows)
    out += [
        "",
        "Server CPU is the server's own process tree (user + system, from /proc); the stand-in's",
        "CPU behind a proxy is not included.",
    ]

    out += ["", "### Start-up and memory", ""]
    rows = []
    for t in shown:
        if t in r.startup:
            runs = r.startup[t]
            rows.append(
                [
                    label[t],
                    f"{statistics.median(runs):.2f} s"
                    + (f" (median of {len(runs)})" if len(runs) > 1 else ""),
                    f"{r.idle_rss.get(t, 0):.0f} MiB",
                ]
            )
    out += table(["", "start-up to healthy", "idle RSS"], rows)

    verdicts = []

    def verdict(name: str, value: float | None, ok: Callable[[float], bool], shown_value: str) -> None:
        mark = "—" if value is None else ("met" if ok(value) else "MISSED")
        verdicts.append(f"| {name} | {shown_value} | {mark} |")

    for scenario in ("hit c16", "hit c64"):
        share = r.med_ratio(scenario, gw, ceiling, rps)
        verdict(
            f"cache-hit req/s at {scenario[5:]} connections ≥ 40% of the ceiling",
            share,
            lambda v: v >= 0.40,
            fmt(share, "pct"),
        )
    hit_p50 = r.med("hit c1", gw, p50)
    verdict("cache-hit p50 at 1 connection ≤ 0.5 ms", hit_p50, lambda v: v <= 0.5, f"{fmt(hit_p50, 'ms')} ms")
    added = r.med_ratio("miss c1", gw, ceiling, p50, diff=True)
    verdict("miss path: p50 added over direct ≤ 1 ms", added, lambda v: v <= 1.0, f"{fmt(added, 'ms')} ms")
    miss_cpu = r.med("miss c16", gw, cpu)
    verdict(
        "miss path: gateway CPU per request ≤ 150 µs (16 connections)",
        miss_cpu,
        lambda v: v <= 150,
        f"{fmt(miss_cpu, 'us')} µs",
    )
    start = statistics.median(r.startup[gw]) if gw in r.startup else None
    verdict("start-up to healthy ≤ 1 s", start, lambda v: v <= 1.0, f"{start or 0:.2f} s")
    rss = r.idle_rss.get(gw)
    verdict("idle memory ≤ 100 MiB", rss, lambda v: v <= 100, f"{rss or 0:.0f} MiB")
    return out, table(["target (TARGETS.md)", "gateway", "verdict"], []) + verdicts


def write_readme(path: Path, section: list[str]) -> None:
    """Replace (or add) the ``## Gateway`` section of benchmarks/README.md."""
    intro = [
        "# Benchmarks",
        "",
        "Measurements of replaygate against the targets in `../shared/TARGETS.md`. The machine is",
        "2 cores, shared and noisy (±20% run to run), so every figure is compared with its peers",
        "measured side by side in the same run, and medians are quoted. Nothing here is asserted",
        "in the test suite.",
        "",
    ]
    text = path.read_text() if path.exists() else "\n".join(intro)
    lines = text.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Gateway"), None)
    if start is None:
        lines += ["", *section]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [*section, ""] if end < len(lines) else section
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


# -- main ---------------------------------------------------------------------------


@contextmanager
def servers_stopped(servers: list[Server]) -> Iterator[None]:
    try:
        yield
    finally:
        for server in reversed(servers):
            server.stop()


def revision() -> str:
    """The commit measured, and whether the gateway's code had uncommitted changes."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "gateway", "cache"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    if head.returncode != 0:
        return "an unknown commit"
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty.stdout.strip() else "")


def versions(lite_venv: Path | None) -> str:
    import aiohttp

    parts = [f"Python {platform.python_version()}", f"aiohttp {aiohttp.__version__}"]
    if lite_venv is not None:
        out = subprocess.run(
            [
                str(lite_venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        parts.append(f"LiteLLM {out.stdout.strip()}")
    wrk_version = subprocess.run(["wrk", "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parts.append(wrk_version.stdout.split("[")[0].strip())
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description="Gateway vs direct vs LiteLLM's proxy, side by side.")
    parser.add_argument("--reps", type=int, default=3, help="rounds over every scenario and target")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unrecorded load before each run")
    parser.add_argument("--startup-reps", type=int, default=5, help="fresh gateway starts to time")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM's proxy out")
    parser.add_argument("--no-uvloop", action="store_true", help="leave the uvloop variant out")
    parser.add_argument(
        "--write-readme", action="store_true", help="write the tables into benchmarks/README.md"
    )
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()

    wrk = ensure_wrk()
    lite_venv = None if args.no_litellm else litellm_venv()
    uv_path = None if args.no_uvloop else uvloop_path()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="replaygate-bench-"))
    logs = tmp / "logs"
    logs.mkdir()
    results = Results()
    servers: list[Server] = []
    print(f"work dir {tmp}; load average {load_before[0]:.2f}", file=sys.stderr)
    try:
        with servers_stopped(servers):
            sport = free_port()
            standin = launch(
                "stand-in direct",
                [sys.executable, str(HERE / "standin_upstream.py"), "--port", str(sport)],
                sport,
                "/v1/models",
                logs / "standin.log",
            )
            servers.append(standin)
            config = gateway_config(tmp / "gateway.yaml", sport)

            # Start-up first, while nothing else is busy: fresh processes, fresh cache dirs.
            variants = [("gateway", False)] + ([] if uv_path is None else [("gateway+uvloop", True)])
            for name, uv in variants:
                env = gateway_env(uv_path if uv else None)
                for i in range(args.startup_reps):
                    port = free_port()
                    cmd = gateway_command(config, tmp / f"start-{name}-{i}", port, uvloop=uv)
                    server = launch(name, cmd, port, "/healthz", logs / f"start-{name}.log", env)
                    results.startup.setdefault(name, []).append(server.started_s)
                    server.stop()
                print(f"{name}: start-up {statistics.median(results.startup[name]):.2f} s", file=sys.stderr)

            for name, uv in variants:
                env = gateway_env(uv_path if uv else None)
                port = free_port()
                cmd = gateway_command(config, tmp / f"cache-{name}", port, uvloop=uv)
                servers.append(launch(name, cmd, port, "/healthz", logs / f"{name}.log", env))
            if lite_venv is not None:
                port = free_port()
                lite_cfg = litellm_config(tmp / "litellm.yaml", sport, tmp / "litellm-cache")
                cmd = [
                    str(lite_venv / "bin" / "litellm"),
                    "--config",
                    str(lite_cfg),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num_workers",
                    "1",
                ]
                env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
                lite = launch(
                    "litellm", cmd, port, "/health/liveliness", logs / "litellm.log", env, MASTER_KEY, 180
                )
                servers.append(lite)
                results.startup["litellm"] = [lite.started_s]
                print(f"litellm: start-up {lite.started_s:.2f} s", file=sys.stderr)
            time.sleep(2.0)  # let start-up work settle before reading idle memory
            for server in servers:
                results.idle_rss[server.name] = server.rss_mib()

            for server in servers:
                served = prime(server)
                if server.name.startswith("gateway") and served != "hit":
                    raise SystemExit(f"{server.name}: expected X-Cache: hit after priming, got {served!r}")

            targets = [s.name for s in servers]
            for rep in range(args.reps):
                for scenario, mode, connections in SCENARIOS:
                    for server in servers:
                        if args.warmup > 0:
                            run_wrk(wrk, server, mode, min(connections, 16), args.warmup, sport)
                        sample = run_wrk(wrk, server, mode, connections, args.duration, sport)
                        if mode == "same" and server is not standin and sample.upstream_calls:
                            print(
                                f"  note: {server.name} sent {sample.upstream_calls} upstream",
                                file=sys.stderr,
                            )
                        results.add(scenario, server.name, sample)
                        print(
                            f"round {rep + 1} {scenario:9s} {server.name:16s} {sample.rps:9,.0f} req/s "
                            f"p50 {sample.p50_ms:6.2f} ms p99 {sample.p99_ms:7.2f} ms "
                            f"cpu {sample.cpu_us_per_req:7,.0f} µs/req errors {sample.errors}",
                            file=sys.stderr,
                        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tables, verdicts = report(results, targets, args)
    script = Path(sys.argv[0]).resolve()
    shown_script = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    command = " ".join([".venv/bin/python", str(shown_script), *sys.argv[1:]])
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_after = os.getloadavg()
    section = [
        "## Gateway",
        "",
        f"Measured {when} at {revision()} with `{command}` (from the repository root),",
        f"on {os.cpu_count()} cores, shared: load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; other engineers' tests may have been running. {versions(lite_venv)}.",
        f"wrk (1 thread) drives every target in turn, {args.duration:g} s a run after {args.warmup:g} s of",
        "warm-up; the POST body is a small chat request (`wrk_post.lua`), answered by the stand-in",
        "(`standin_upstream.py`, ~390 bytes with usage). The load generator shares the 2 cores with",
        "the server under test, as do the gateway's index and record-writer threads. Ratios are",
        "medians of per-round ratios.",
        "",
        *tables,
        "",
        "### Against TARGETS.md",
        "",
        *verdicts,
    ]
    print("\n".join(section))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "samples": {
                        sc: {t: [s.__dict__ for s in ss] for t, ss in by.items()}
                        for sc, by in results.samples.items()
                    },
                    "startup_s": results.startup,
                    "idle_rss_mib": results.idle_rss,
                },
                indent=1,
            )
        )
    if args.write_readme:
        write_readme(HERE / "README.md", section)
        print(f"wrote {HERE / 'README.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
