"""No secret leaves: an echoed key is masked in answers, streams, errors, the index, records and logs."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cache.index import rebuild_index
from gateway.app import PIPELINE
from gateway.auth import digest
from gateway.config import ConfigError, parse_config
from gateway.errors import upstream_failure
from gateway.redaction import MASK, RedactingFilter, Redactor
from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.processes import REPO, until
from tests.standin import Fault, StandIn

KEY_ENV = "RG_TEST_PROVIDER_KEY"
PLAIN_SECRET = "sk-planted-SECRET-4c1d7e0b9a"
# JSON must escape these characters, so a search for the raw key in a JSON body misses them.
ESCAPED_SECRET = 'sk-"quoted"\\back\\slash-9f3'
SECRETS = [PLAIN_SECRET, ESCAPED_SECRET]
BODY = {"model": "standin", "prompt": "hello", "max_tokens": 4, "temperature": 0}


def shows(blob: bytes, secret: str) -> bool:
    """Whether ``secret`` appears in ``blob`` in any encoding: raw or JSON-escaped."""
    forms = {secret.encode(), orjson.dumps(secret)[1:-1], json.dumps(secret)[1:-1].encode()}
    return any(form in blob for form in forms)


def written_bytes(store: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file under ``store``, with its bytes."""
    return ((p, p.read_bytes()) for p in store.rglob("*") if p.is_file())


async def keyed_gateway(make_gateway: GatewayFactory, standin: StandIn, store: Path) -> RunningGateway:
    return await make_gateway(
        model_yaml(standin.api_base, name="standin", api_key_env=KEY_ENV), cache_dir=store
    )


@pytest.mark.parametrize("secret", SECRETS, ids=["plain", "json-escaped"])
async def test_a_key_echoed_in_a_200_answer_is_masked_for_the_client_the_index_and_every_later_hit(
    make_gateway: GatewayFactory,
    standin: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    secret: str,
) -> None:
    monkeypatch.setenv(KEY_ENV, secret)
    store = tmp_path / "store"
    gateway = await keyed_gateway(make_gateway, standin, store)
    standin.script = [Fault("answer", message=f"you sent the key {secret}, thanks")]
    miss = await gateway.post("/v1/completions", BODY)
    hit = await gateway.post("/v1/completions", BODY)
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("miss", "hit")
    assert orjson.loads(await miss.read())["choices"][0]["text"] == f"you sent the key {MASK}, thanks"
    assert await hit.read() == await miss.read()
    rebuild_index(store)
    after_rebuild = await (await keyed_gateway(make_gateway, standin, store)).post("/v1/completions", BODY)
    assert after_rebuild.headers["X-Cache"] == "hit"
    assert await after_rebuild.read() == await miss.read()  # the index said what the records say
    assert standin.calls["/v1/completions"] == 1
    for path, blob in written_bytes(store):
        assert not shows(blob, secret), path


async def test_a_key_echoed_in_a_stream_is_masked_in_its_events_the_index_and_later_hits(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, ESCAPED_SECRET)
    store = tmp_path / "store"
    gateway = await keyed_gateway(make_gateway, standin, store)
    streamed = {**BODY, "stream": True}
    # One event carries the whole key; another answer splits it over two events.
    half = len(ESCAPED_SECRET) // 2
    standin.script = [
        Fault("answer", message=f"key {ESCAPED_SECRET}|, done"),
        Fault("answer", message=f"key {ESCAPED_SECRET[:half]}|{ESCAPED_SECRET[half:]}"),
    ]
    whole = await gateway.post("/v1/completions", streamed)
    split = await gateway.post("/v1/completions", {**streamed, "prompt": "split"})
    assert whole.headers["X-Cache"] == split.headers["X-Cache"] == "miss"
    assert not shows(await whole.read(), ESCAPED_SECRET)
    assert MASK.encode() in await whole.read()
    hits = [await gateway.post("/v1/completions", b) for b in (streamed, {**streamed, "prompt": "split"})]
    hits += [
        await gateway.post("/v1/completions", {**BODY, "prompt": "split"})
    ]  # plain hit of a streamed miss
    for hit in hits:
        assert hit.headers["X-Cache"] == "hit"
        assert not shows(await hit.read(), ESCAPED_SECRET)
        assert MASK.encode() in await hit.read()
    for path, blob in written_bytes(store):
        assert not shows(blob, ESCAPED_SECRET), path


async def test_an_error_after_a_stream_started_is_masked(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, ESCAPED_SECRET)
    gateway = await keyed_gateway(make_gateway, standin, tmp_path / "store")
    first_event = orjson.dumps({"choices": [{"index": 0, "text": "partial", "finish_reason": None}]})

    async def breaks_after_one_event(endpoint: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        yield first_event
        raise upstream_failure(500, f"backend lost the session for key {ESCAPED_SECRET}")

    monkeypatch.setattr(gateway.upstream("standin").provider, "stream", breaks_after_one_event)
    response = await gateway.post("/v1/completions", {**BODY, "stream": True})
    events = await response.read()
    assert response.status == 200 and b"partial" in events
    assert b'"error"' in events and MASK.encode() in events
    assert not shows(events, ESCAPED_SECRET)
    (record,) = gateway.records()
    assert record["status"] == 500 and MASK in record["error"]["message"]


async def test_a_stream_failing_before_its_first_event_leaves_no_unretrieved_task_exception(
    make_gateway: GatewayFactory,
    standin: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_ENV, PLAIN_SECRET)
    gateway = await keyed_gateway(make_gateway, standin, tmp_path / "store")
    pipeline = gateway.app[PIPELINE]
    for cache_control in ("", "no-store"):  # a single-flight call, and a detached bypass one
        standin.script = [Fault("status", 401, f"Incorrect API key provided: {PLAIN_SECRET}")]
        response = await gateway.post(
            "/v1/completions", {**BODY, "stream": True}, headers={"Cache-Control": cache_control}
        )
        assert response.status == 401
        error = orjson.loads(await response.read())["error"]
        assert error["message"] == f"upstream returned 401: Incorrect API key provided: {MASK}"

        async def settled() -> bool:
            return not pipeline.flights and not [t for t in asyncio.all_tasks() if "_fetch_stream" in repr(t)]

        await until(settled, 10, "the failed upstream call to finish")
        gc.collect()  # asyncio reports an unretrieved exception when the task is collected
    assert [r for r in caplog.records if "never retrieved" in r.getMessage()] == []
    assert not any(PLAIN_SECRET in r.getMessage() for r in caplog.records)


def test_log_tracebacks_and_stacks_are_masked_in_text_and_json_lines() -> None:
    from pythonjsonlogger.json import JsonFormatter

    redactor = Redactor([ESCAPED_SECRET])
    outputs = []
    logger = logging.getLogger("tests.secrets.tracebacks")
    logger.propagate = False
    for formatter in (logging.Formatter("%(levelname)s %(message)s"), JsonFormatter("%(message)s")):
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter(redactor))
        logger.handlers[:] = [handler]
        try:
            raise RuntimeError(f"upstream said: bad key {ESCAPED_SECRET}")
        except RuntimeError:
            logger.exception("call failed for %s", ESCAPED_SECRET)
        logger.error("here", stack_info=True, extra={"unused": 1})
        outputs.append(out.getvalue())
    logger.handlers[:] = []
    text, json_lines = outputs
    assert "RuntimeError: upstream said: bad key [redacted]" in text
    assert "Traceback" in text and "Stack (most recent call last)" in text
    assert "RuntimeError" in orjson.loads(json_lines.splitlines()[0])["exc_info"]
    for output in outputs:
        assert not shows(output.encode(), ESCAPED_SECRET)


async def test_keys_of_any_length_are_masked_in_records_and_answers(
    make_gateway: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    short_key = 'k"7'  # a gateway key: only its digest is configured, so it cannot be refused up front
    store = tmp_path / "store"
    keyed = model_yaml(standin.api_base, name="standin") + (
        f"keys:\n  - name: short\n    sha256: {digest(short_key)}\n"
    )
    gateway = await make_gateway(keyed, cache_dir=store)
    response = await gateway.post(
        "/v1/completions", {**BODY, "prompt": f"my key: {short_key}"}, headers={"x-api-key": short_key}
    )
    assert response.status == 200
    assert not shows(await response.read(), short_key)
    for path, blob in written_bytes(store):
        assert not shows(blob, short_key), path


def test_a_provider_key_too_short_to_mask_is_refused_at_config_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-12")
    with pytest.raises(ConfigError) as refused:
        parse_config(model_yaml("http://127.0.0.1:1/v1", api_key_env=KEY_ENV), "test config")
    assert f"${KEY_ENV} is 5 characters long" in str(refused.value)
    assert "under 8 characters are refused" in str(refused.value)
    assert "sk-12" not in str(refused.value)
    monkeypatch.setenv(KEY_ENV, "sk-12345")
    parse_config(model_yaml("http://127.0.0.1:1/v1", api_key_env=KEY_ENV), "test config")


def test_a_match_inside_an_escape_sequence_is_not_masked_and_the_json_stays_valid() -> None:
    redactor = Redactor(["nKEY-0123456789"])
    body = orjson.dumps({"text": "\nKEY-0123456789", "key": "nKEY-0123456789"})
    scrubbed = redactor.scrub(body)
    assert orjson.loads(scrubbed) == {"text": "\nKEY-0123456789", "key": MASK}


def _modes(store: Path) -> dict[str, str]:
    """Every path under ``store`` (and the store) whose mode lets its group or others in."""
    paths = [store, *store.rglob("*")]
    return {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths if p.stat().st_mode & 0o077}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The common default umask (022), as a user's shell would give the gateway."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


async def test_everything_the_gateway_creates_under_the_cache_dir_is_private(
    make_gateway: GatewayFactory, standin: StandIn, tmp_path: Path, open_umask: None
) -> None:
    store = tmp_path / "store"
    gateway = await make_gateway(model_yaml(standin.api_base, name="standin"), cache_dir=store)
    big = {**BODY, "prompt": "x" * 100_000}  # diskcache keeps large values in files of their own
    for body in (BODY, big):
        assert (await gateway.post("/runs/private/v1/completions", body)).status == 200
    assert list((store / "index").iterdir())
    assert _modes(store) == {}


def test_gateway_cache_rebuild_creates_a_private_index(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = store / "runs" / "r"
    run.mkdir(parents=True, mode=0o700)
    store.chmod(0o700)
    (store / "runs").chmod(0o700)
    record = {"key": "k", "served": "miss", "status": 200, "response": {"choices": []}}
    (run / "1-host-1.jsonl").write_bytes(orjson.dumps(record) + b"\n")
    (run / "1-host-1.jsonl").chmod(0o600)
    subprocess.run(
        [sys.executable, "-m", "gateway.cli", "cache", "rebuild", "--cache-dir", str(store)],
        cwd=REPO,
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert list((store / "index").iterdir())
    assert _modes(store) == {}


def test_gateway_keys_hash_refuses_a_key_too_short_to_mask() -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    short = CliRunner().invoke(main, ["keys", "hash"], input="abc1234\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.output
    long = CliRunner().invoke(main, ["keys", "hash"], input="abc12345\n")
    assert long.exit_code == 0 and long.output.strip() == digest("abc12345")


async def test_the_provider_key_is_read_from_the_environment_at_each_call(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The provider builds its headers once and reuses them: a rotated key must still go out next.
    gateway = await keyed_gateway(make_gateway, standin, tmp_path / "store")
    sent = []
    for key in ("sk-first-1111", "sk-rotated-2222", None):
        if key is None:
            monkeypatch.delenv(KEY_ENV, raising=False)
        else:
            monkeypatch.setenv(KEY_ENV, key)
        response = await gateway.post("/v1/completions", {**BODY, "prompt": f"for {key}"})
        assert response.status == 200
        seen = standin.headers_seen[-1]
        sent.append((seen.get("Authorization"), seen.get("Content-Type")))
    assert sent == [
        ("Bearer sk-first-1111", "application/json"),
        ("Bearer sk-rotated-2222", "application/json"),
        (None, "application/json"),
    ]
