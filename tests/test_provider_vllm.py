"""The in-process vLLM engine (``provider: vllm``) gives the vLLM server's answers, with no HTTP hop.

The project's venv has no vLLM, so the gateway under test runs as
``gateway serve`` under the vLLM venv's python (deploy/bootstrap.sh puts the
gateway's own dependencies there). One engine is started for the whole module
(~3.4 GB, 30-40 s on an idle CPU); the reference is the session's vLLM server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.config import replaygate_home
from tests.upstreams import VLLMServer, free_port, vllm_available

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
# The first test also pays for the engine's start, which a busy 2-core machine stretches past 3 minutes.
pytestmark = pytest.mark.timeout(900)
LOGPROB_TOLERANCE = 2e-3  # bf16 on a CPU: batch composition moves the last bits

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Question: What is 12 + 30?\nAnswer:",
    "Once upon a time, in a small village,",
]


@dataclass
class EngineGateway:
    """``gateway serve`` with one ``provider: vllm`` model, in its own process."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self) -> None:
        """SIGTERM the whole process group (gateway and engine core), SIGKILL if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def engine_config(name: str = "smollm2") -> str:
    """A config serving SmolLM2 from an in-process engine."""
    model = replaygate_home() / "models" / "SmolLM2-135M-Instruct"
    return (
        "models:\n"
        f"  - name: {name}\n"
        "    provider: vllm\n"
        "    timeout_s: 600\n"
        "    engine_args:\n"
        f"      model: {model}\n"
        "      enforce_eager: true\n"
        "      max_model_len: 2048\n"
    )


def start_engine_gateway(tmp: Path, config: str | None = None, ready_timeout_s: float = 900) -> EngineGateway:
    """Start ``gateway serve`` under the vLLM venv's python and wait until its engine answers.

    /healthz answers as soon as the gateway listens; the engine starts behind
    it, so readiness is a first completion (which also pays vLLM's warm-up).
    """
    python = replaygate_home() / "vllm-venv" / "bin" / "python"
    config_path = tmp / "engine.yaml"
    config_path.write_text(config or engine_config())
    port = free_port()
    log_path = tmp / "engine-gateway.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    command = [str(python), "-m", "gateway.cli", "serve", "--config", str(config_path)]
    command += ["--cache-dir", str(tmp / "store"), "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    gateway = EngineGateway(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout_s
    try:
        while not _answers(gateway.url + "/healthz"):
            _check_alive(gateway, deadline)
            time.sleep(0.5)  # no other signal that it listens
        warm_up = orjson.dumps(
            {"model": "smollm2", "prompt": "warm up", "max_tokens": 1, "echo": True, "logprobs": 1}
        )
        request = urllib.request.Request(
            gateway.url + "/v1/completions",
            warm_up,
            {"Content-Type": "application/json", "Cache-Control": "no-store"},
        )
        with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())) as response:
            assert response.status == 200
    except BaseException:
        gateway.stop()
        raise
    return gateway


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _check_alive(gateway: EngineGateway, deadline: float) -> None:
    if gateway.process.poll() is not None:
        raise RuntimeError(f"the engine gateway exited; see {gateway.log_path}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"the engine gateway did not start; see {gateway.log_path}")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineGateway]:
    """One in-process engine behind a gateway, for the whole module."""
    if not vllm_available():
        message = "the vLLM venv or the model is not set up: run deploy/bootstrap.sh vllm"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    gateway = start_engine_gateway(tmp_path_factory.mktemp("engine"))
    yield gateway
    gateway.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as response:
        payload = await response.read()
        assert response.status == 200, payload[:500]
        return orjson.loads(payload)


async def both(
    http: aiohttp.ClientSession, engine: EngineGateway, vllm: VLLMServer, path: str, body: dict[str, Any]
) -> tuple[Any, Any]:
    """The engine's answer (through the gateway) and the vLLM server's, to the same request."""
    return await post(http, engine.url + path, body), await post(http, vllm.url + path, body)


# -- generation -------------------------------------------------------------------

# vLLM's CPU numerics are not batch-invariant: the same prompt's logprobs move by up to ~0.16 nats
# with what else the server is running (measured; see tests/test_scheduling.py), so a greedy pick
# between two candidates closer than this can flip. Past such a tie the texts may rightly differ.
NEAR_TIE = 0.25


def assert_same_greedy(
    ours: list[tuple[str, dict[str, float]]], theirs: list[tuple[str, dict[str, float]]]
) -> None:
    """Both picked the same tokens, up to a point where the server's own top two were a near tie.

    Each side is a list of (chosen token, top candidates with their logprobs), one per position.
    """
    for position, ((mine, _), (reference, candidates)) in enumerate(zip(ours, theirs, strict=False)):
        if mine == reference:
            continue
        assert mine in candidates and candidates[reference] - candidates[mine] < NEAR_TIE, (
            f"token {position}: {mine!r} where the server chose {reference!r} by more than a near tie "
            f"({candidates})"
        )
        return  # the continuations of two different tokens need not agree
    assert len(ours) == len(theirs), "one side stopped early without diverging"


def completion_tokens(answer: Any) -> list[tuple[str, dict[str, float]]]:
    """(token, top logprobs) per generated position of a completions answer asked with ``logprobs``."""
    logprobs = answer["choices"][0]["logprobs"]
    return list(zip(logprobs["tokens"], logprobs["top_logprobs"], strict=True))


def choice_of(answer: Any, index: int) -> Any:
    """``answer`` with only its choice ``index`` (a list of prompts answers one choice each)."""
    return {**answer, "choices": [c for c in answer["choices"] if c["index"] == index]}


def chat_tokens(answer: Any) -> list[tuple[str, dict[str, float]]]:
    """(token, top logprobs) per generated position of a chat answer asked with ``top_logprobs``."""
    content = answer["choices"][0]["logprobs"]["content"]
    return [(t["token"], {c["token"]: c["logprob"] for c in t["top_logprobs"]}) for t in content]


async def test_greedy_completions_match_the_vllm_server(
    engine: EngineGateway, vllm: VLLMServer, http: aiohttp.ClientSession
) -> None:
    for prompt in PROMPTS:
        body = {"model": "smollm2", "prompt": prompt, "max_tokens": 16, "temperature": 0, "logprobs": 2}
        mine, theirs = await both(http, engine, vllm, "/v1/completions", body)
        assert_same_greedy(completion_tokens(mine), completion_tokens(theirs))
        assert mine["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]


async def test_a_list_of_prompts_and_token_id_prompts_match_the_vllm_server(
    engine: EngineGateway, vllm: VLLMServer, http: aiohttp.ClientSession
) -> None:
    body = {"model": "smollm2", "prompt": PROMPTS, "max_tokens": 8, "temperature": 0, "logprobs": 2}
    mine, theirs = await both(http, engine, vllm, "/v1/completions", body)
    assert len(mine["choices"]) == len(theirs["choices"]) == len(PROMPTS)
    for index in range(len(PROMPTS)):
        assert_same_greedy(*(completion_tokens(choice_of(a, index)) for a in (mine, theirs)))
    ids = (await post(http, vllm.url + "/tokenize", {"model": "smollm2", "prompt": PROMPTS[0]}))["tokens"]
    body = {**body, "prompt": ids}
    mine, theirs = await both(http, engine, vllm, "/v1/completions", body)
    assert_same_greedy(completion_tokens(mine), completion_tokens(theirs))


@pytest.mark.parametrize("max_tokens", [0, 1])
async def test_echo_logprobs_give_the_same_tokens_and_logprobs(
    engine: EngineGateway, vllm: VLLMServer, http: aiohttp.ClientSession, max_tokens: int
) -> None:
    for prompt in PROMPTS:
        body = {"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "echo": True, "logprobs": 1}
        body["temperature"] = 0
        mine, theirs = await both(http, engine, vllm, "/v1/completions", body)
        ours, reference = mine["choices"][0]["logprobs"], theirs["choices"][0]["logprobs"]
        assert ours["tokens"] == reference["tokens"]
        assert ours["text_offset"] == reference["text_offset"]
        assert ours["token_logprobs"][0] is None and reference["token_logprobs"][0] is None
        for a, b in zip(ours["token_logprobs"][1:], reference["token_logprobs"][1:], strict=True):
            assert a == pytest.approx(b, abs=LOGPROB_TOLERANCE)


async def test_greedy_chat_matches_the_vllm_server(
    engine: EngineGateway, vllm: VLLMServer, http: aiohttp.ClientSession
) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    body = {"model": "smollm2", "messages": messages, "max_tokens": 20, "temperature": 0}
    body |= {"logprobs": True, "top_logprobs": 2}
    mine, theirs = await both(http, engine, vllm, "/v1/chat/completions", body)
    assert_same_greedy(chat_tokens(mine), chat_tokens(theirs))


async def test_a_streamed_completion_carries_the_servers_text(
    engine: EngineGateway, vllm: VLLMServer, http: aiohttp.ClientSession
) -> None:
    body = {"model": "smollm2", "prompt": PROMPTS[3], "max_tokens": 16, "temperature": 0, "logprobs": 2}
    theirs = await post(http, vllm.url + "/v1/completions", body)
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(engine.url + "/v1/completions", json=streamed) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.read()
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e)["choices"][0] for e in events[:-1] if orjson.loads(e).get("choices")]
    tokens = [
        t for c in chunks for t in zip(c["logprobs"]["tokens"], c["logprobs"]["top_logprobs"], strict=True)
    ]
    assert "".join(c.get("text") or "" for c in chunks) == "".join(token for token, _ in tokens)
    assert_same_greedy(tokens, completion_tokens(theirs))  # the server's text, up to a near tie
    usage = [orjson.loads(e)["usage"] for e in events[:-1] if orjson.loads(e).get("usage")]
    assert usage[-1]["completion_tokens"] == 16


# -- tokenizer endpoints -------------------------------------------------------------


async def test_tokenizer_endpoints_match_the_vllm_server(
    engine: EngineGateway, vllm: VLLMServer, http: aiohttp.ClientSession
) -> None:
    mine, theirs = await both(http, engine, vllm, "/tokenize", {"model": "smollm2", "prompt": PROMPTS[2]})
    assert mine["tokens"] == theirs["tokens"] and mine["count"] == theirs["count"]
    body = {"model": "smollm2", "tokens": theirs["tokens"]}
    mine, theirs = await both(http, engine, vllm, "/detokenize", body)
    assert mine == theirs
    async with http.get(engine.url + "/tokenizer_info") as response:
        assert response.status == 200
        info = await response.json()
    async with http.get(vllm.url + "/tokenizer_info") as response:
        assert info == await response.json()


# -- errors ---------------------------------------------------------------------------


async def test_a_request_past_the_context_gets_the_servers_400_and_no_retry(
    engine: EngineGateway, vllm: VLLMServer, http: aiohttp.ClientSession
) -> None:
    body = {"model": "smollm2", "prompt": "hello", "max_tokens": 5000}
    async with http.post(vllm.url + "/v1/completions", json=body) as response:
        assert response.status == 400
    started = time.monotonic()
    async with http.post(engine.url + "/v1/completions", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "code"} and "2048" in error["message"]
    assert time.monotonic() - started < 5  # a 4xx is never retried
