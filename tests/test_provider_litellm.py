"""The litellm provider: a real upstream via litellm's OpenAI route, faults mapped, imported on demand.

No network: litellm's ``openai/`` route is pointed at the real local vLLM (a
real HTTP upstream) and at the fault-injecting stand-in.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from gateway.config import ModelConfig
from gateway.errors import GatewayError, UpstreamError
from gateway.providers.litellm import LiteLLMProvider
from tests.conftest import GatewayFactory
from tests.standin import Fault, StandIn
from tests.upstreams import VLLMServer, free_port

REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "REPLAYGATE_TEST_LITELLM_KEY"
SECRET = "sk-test-never-logged-8d1f"


def litellm_yaml(api_base: str, name: str = "smol", **extra: object) -> str:
    lines = [
        f"  - name: {name}",
        "    provider: litellm",
        f"    upstream_model: openai/{'smollm2' if name == 'smol' else 'standin'}",
        f"    api_base: {api_base}",
        f"    api_key_env: {KEY_ENV}",
    ]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "models:\n" + "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def provider_for(api_base: str, timeout_s: float = 30, upstream: str = "standin") -> LiteLLMProvider:
    return LiteLLMProvider(
        ModelConfig(
            name="standin",
            provider="litellm",
            upstream_model=f"openai/{upstream}",
            api_base=api_base,
            api_key_env=KEY_ENV,
            timeout_s=timeout_s,
        )
    )


BODY = {"model": "standin", "prompt": "hello", "max_tokens": 4}


# -- a real upstream ------------------------------------------------------------


async def test_litellm_route_gives_the_real_vllm_answers_through_the_gateway(
    vllm: VLLMServer, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(litellm_yaml(vllm.url + "/v1"))
    body = {"model": "smol", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    direct = await gateway.session.post(vllm.url + "/v1/completions", json={**body, "model": "smollm2"})
    expected = (await direct.json())["choices"][0]["text"]

    response = await gateway.post("/v1/completions", body)
    assert response.status == 200, await response.text()
    assert response.headers["X-Cache"] == "miss"
    assert orjson.loads(await response.read())["choices"][0]["text"] == expected
    again = await gateway.post("/v1/completions", body)
    assert again.headers["X-Cache"] == "hit"

    chat = {"model": "smol", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6}
    direct = await gateway.session.post(
        vllm.url + "/v1/chat/completions", json={**chat, "model": "smollm2", "temperature": 0}
    )
    expected = (await direct.json())["choices"][0]["message"]["content"]
    response = await gateway.post("/v1/chat/completions", {**chat, "temperature": 0})
    assert response.status == 200, await response.text()
    assert orjson.loads(await response.read())["choices"][0]["message"]["content"] == expected

    streamed = await gateway.post("/v1/chat/completions", {**chat, "temperature": 0, "stream": True})
    assert streamed.status == 200
    events = [line[6:] for line in (await streamed.read()).split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    text = "".join(
        (c["delta"].get("content") or "") for e in events[:-1] for c in orjson.loads(e).get("choices", [])
    )
    assert text == expected


async def test_echo_logprobs_pass_through_litellm_unchanged(vllm: VLLMServer) -> None:
    provider = provider_for(vllm.url + "/v1", upstream="smollm2")
    body = {"prompt": "The capital of France is", "max_tokens": 0, "echo": True, "logprobs": 1}
    reply = await provider.call("/v1/completions", body)
    logprobs = orjson.loads(reply.body)["choices"][0]["logprobs"]
    assert logprobs["tokens"][1:] == [" capital", " of", " France", " is"]
    assert logprobs["token_logprobs"][0] is None
    assert all(isinstance(x, float) for x in logprobs["token_logprobs"][1:])


# -- faults -----------------------------------------------------------------------


async def test_429_with_retry_after_is_retryable_and_says_how_long(standin: StandIn) -> None:
    standin.script = [Fault("status", 429, "slow down", {"Retry-After": "7"})]
    with pytest.raises(UpstreamError) as caught:
        await provider_for(standin.api_base).call("/v1/completions", BODY)
    assert (caught.value.status, caught.value.retryable, caught.value.retry_after) == (429, True, 7.0)
    assert standin.calls["/v1/completions"] == 1  # litellm's own retries are off: ours count


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (400, False), (404, False)])
async def test_upstream_statuses_keep_their_code_and_only_5xx_retry(
    standin: StandIn, status: int, retryable: bool
) -> None:
    standin.script = [Fault("status", status, "scripted failure")]
    with pytest.raises(UpstreamError) as caught:
        await provider_for(standin.api_base).call("/v1/chat/completions", {"messages": [], **BODY})
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert "scripted failure" in caught.value.message
    assert standin.calls["/v1/chat/completions"] == 1


async def test_a_hang_past_the_timeout_is_a_504(standin: StandIn) -> None:
    standin.script = [Fault("hang")]
    with pytest.raises(UpstreamError) as caught:
        await provider_for(standin.api_base, timeout_s=0.5).call("/v1/completions", BODY)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (504, "upstream_timeout", True)


async def test_nobody_listening_is_a_retryable_502() -> None:
    provider = provider_for(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UpstreamError) as caught:
        await provider.call("/v1/completions", BODY)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        502,
        "upstream_unreachable",
        True,
    )


async def test_stream_faults_map_the_same_way(standin: StandIn) -> None:
    standin.script = [Fault("status", 429, "slow down", {"retry-after-ms": "1500"})]
    with pytest.raises(UpstreamError) as caught:
        async for _ in provider_for(standin.api_base).stream("/v1/completions", BODY):
            pass
    assert (caught.value.status, caught.value.retryable, caught.value.retry_after) == (429, True, 1.5)


async def test_tokenizer_endpoints_say_they_are_not_supported(
    standin: StandIn, make_gateway: GatewayFactory
) -> None:
    with pytest.raises(GatewayError) as caught:
        await provider_for(standin.api_base).call("/tokenize", {"prompt": "x"})
    assert caught.value.status == 501 and "not supported" in caught.value.message
    gateway = await make_gateway(litellm_yaml(standin.api_base, name="standin"))
    response = await gateway.post("/tokenize", {"model": "standin", "prompt": "x"})
    assert response.status == 501
    assert "not supported by provider litellm" in (await response.json())["error"]["message"]
    assert sum(standin.calls.values()) == 0


async def test_the_key_is_sent_per_call_and_never_kept(
    standin: StandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(litellm_yaml(standin.api_base, name="standin"))
    response = await gateway.post("/v1/completions", BODY)
    assert response.status == 200, await response.text()
    import litellm

    assert litellm.api_key is None and litellm.openai_key is None
    for path in gateway.cache_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# -- imported only on demand -------------------------------------------------------


def test_a_gateway_of_openai_compatible_models_never_imports_litellm_or_vllm(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from aiohttp import web
        from gateway.app import create_app
        from gateway.config import parse_config

        async def main():
            text = "models:\\n  - name: m\\n    api_base: http://127.0.0.1:9/v1\\n"
            config = parse_config(text, "t", cache_dir={str(tmp_path)!r})
            runner = web.AppRunner(create_app(config))
            await runner.setup()  # runs start-up: every provider is made
            try:
                print(sorted(m for m in ("litellm", "vllm") if m in sys.modules))
            finally:
                await runner.cleanup()

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
