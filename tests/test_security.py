"""Keys, grants, secrets and shutdown: who may call what, what never leaks, how the gateway stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.auth import digest
from gateway.config import ConfigError, parse_config
from tests.conftest import GatewayFactory, model_yaml
from tests.processes import GatewayProcess, refused, until
from tests.standin import Fault, StandIn

CLIENT_KEY = "rg-client-key-0123456789abcdef"
PROVIDER_SECRET = "sk-planted-SECRET-4c1d7e0b9a"
BODY = {"model": "standin", "prompt": "hello", "max_tokens": 4, "temperature": 0}


def keyed_yaml(api_base: str, runs: str = '[""]', models: str = '["standin"]') -> str:
    return model_yaml(api_base, name="standin", api_key_env="RG_TEST_PROVIDER_KEY") + (
        f"keys:\n  - name: team\n    sha256: {digest(CLIENT_KEY)}\n    models: {models}\n    runs: {runs}\n"
    )


async def test_keys_are_required_and_grants_limit_models_and_runs(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RG_TEST_PROVIDER_KEY", PROVIDER_SECRET)
    gateway = await make_gateway(keyed_yaml(standin.api_base, runs='["team-"]'))
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    missing = await gateway.post("/runs/team-1/v1/completions", BODY)
    wrong = await gateway.post("/runs/team-1/v1/completions", BODY, headers={"Authorization": "Bearer nope"})
    other_run = await gateway.post("/runs/other/v1/completions", BODY, headers=auth)
    allowed = await gateway.post("/runs/team-1/v1/completions", BODY, headers=auth)
    by_header = await gateway.post("/runs/team-2/v1/completions", BODY, headers={"api-key": CLIENT_KEY})
    assert [missing.status, wrong.status, other_run.status] == [401, 401, 403]
    assert orjson.loads(await other_run.read())["error"]["code"] == "run_not_allowed"
    assert (allowed.status, by_header.status) == (200, 200)
    assert standin.calls["/v1/completions"] == 1  # the rejected ones never reached upstream
    health = await gateway.session.get(gateway.url + "/healthz")
    assert health.status == 200


async def test_a_run_grant_is_an_exact_run_id_unless_it_ends_in_a_separator_or_star(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RG_TEST_PROVIDER_KEY", PROVIDER_SECRET)
    gateway = await make_gateway(keyed_yaml(standin.api_base, runs='["team", "lab-", "exp*"]'))
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    wanted = {
        "team": 200,
        "teammate": 403,  # "team" is a run-id, not a prefix
        "team-1": 403,
        "lab-1": 200,
        "lab-": 200,
        "lab": 403,
        "laboratory": 403,
        "exp": 200,
        "experiment": 200,
        "other": 403,
    }
    got = {}
    for run_id in wanted:
        got[run_id] = (await gateway.post(f"/runs/{run_id}/v1/completions", BODY, headers=auth)).status
    assert got == wanted


@pytest.mark.parametrize("pattern", ["te*am", "**", "../x", "a b"])
def test_a_run_grant_that_is_neither_a_run_id_nor_a_prefix_is_refused_at_config_load(pattern: str) -> None:
    with pytest.raises(ConfigError, match="neither a run-id nor a prefix"):
        parse_config(keyed_yaml("http://127.0.0.1:1/v1", runs=orjson.dumps([pattern]).decode()), "test")


async def test_a_key_outside_its_models_gets_403(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RG_TEST_PROVIDER_KEY", PROVIDER_SECRET)
    gateway = await make_gateway(keyed_yaml(standin.api_base, models='["some-other-model"]'))
    response = await gateway.post("/v1/completions", BODY, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status == 403
    assert orjson.loads(await response.read())["error"]["code"] == "model_not_allowed"


async def test_planted_secrets_appear_in_no_byte_the_gateway_wrote(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RG_TEST_PROVIDER_KEY", PROVIDER_SECRET)
    store = tmp_path / "store"
    gateway = await make_gateway(keyed_yaml(standin.api_base), cache_dir=store)
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    # An upstream that echoes the key it was sent, and a client that puts keys in the body.
    standin.script = [Fault("status", 401, f"Incorrect API key provided: {PROVIDER_SECRET}")]
    echoed = await gateway.post("/v1/completions", BODY, headers=auth)
    assert echoed.status == 401
    in_body = await gateway.post(
        "/v1/completions", {**BODY, "api_key": PROVIDER_SECRET, "user": CLIENT_KEY}, headers=auth
    )
    assert in_body.status == 200
    assert standin.headers_seen[-1]["Authorization"] == f"Bearer {PROVIDER_SECRET}"
    assert "api_key" not in standin.bodies_seen[-1]
    metrics = await gateway.session.get(gateway.url + "/metrics")
    visible = [await echoed.read(), await in_body.read(), await metrics.read()]
    written = [p.read_bytes() for p in store.rglob("*") if p.is_file()]
    for blob in visible + written:
        assert PROVIDER_SECRET.encode() not in blob
        assert CLIENT_KEY.encode() not in blob


async def test_sigterm_stops_accepting_lets_in_flight_requests_finish_and_exits_0(
    standin: StandIn, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(model_yaml(standin.api_base, name="standin"))
    gateway = GatewayProcess(config, tmp_path / "store", tmp_path / "gateway.log")
    gateway.start()
    try:
        async with aiohttp.ClientSession() as session:
            await gateway.wait_healthy(session)
            standin.script = [Fault("hang")]
            in_flight = asyncio.ensure_future(session.post(gateway.url + "/v1/completions", json=BODY))
            await standin.arrived.wait()
            gateway.terminate()
            await until(lambda: refused(gateway.url + "/healthz"), 30, "the gateway to stop accepting")
            assert not in_flight.done()
            standin.released.set()
            response = await in_flight
            assert response.status == 200 and (await response.json())["choices"]
        assert gateway.stop() == 0
        (shard,) = (tmp_path / "store" / "runs" / "default").glob("*.jsonl")
        (line,) = shard.read_bytes().splitlines()
        assert orjson.loads(line)["status"] == 200
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
