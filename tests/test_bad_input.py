"""Bad input never gets a 500: schemathesis fuzzes the published OpenAPI description, and hand-made abuse.

Every case here goes through a gateway in front of the fault-injecting stand-in
(a fast, always-answering upstream), so what is measured is the gateway's handling.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.standin import StandIn

BODY = {"model": "standin", "prompt": "hello", "max_tokens": 4, "temperature": 0}


@pytest.fixture
async def gateway(standin: StandIn, make_gateway: GatewayFactory) -> RunningGateway:  # type: ignore[override]
    return await make_gateway(model_yaml(standin.api_base, name="standin") + "max_body_bytes: 1048576\n")


async def test_the_openapi_description_is_published(gateway: RunningGateway) -> None:
    response = await gateway.session.get(gateway.url + "/openapi.json")
    spec = await response.json()
    assert spec["openapi"].startswith("3.")
    assert "/runs/{run_id}/v1/chat/completions" in spec["paths"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"]["properties"]["model"]["enum"] == ["standin"]


async def test_schemathesis_finds_no_server_error_and_no_response_off_schema(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        gateway.url + "/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples",
        "25",
        "--seed",
        "7",
        "--request-timeout",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()[-4000:]


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("text/plain", orjson.dumps(BODY), 200),  # curl -d sends a form type: the body is what counts
        ("application/x-www-form-urlencoded", b"model=standin&prompt=hi", 400),
        ("application/json", b"\xff\xfe\x00garbage", 400),
        ("application/json", b"[" * 5000 + b"]" * 5000, 400),
        ("application/json", b"", 400),
    ],
    ids=["text-plain-json", "form", "non-utf8", "deeply-nested", "empty"],
)
async def test_wrong_content_and_encodings_get_a_clear_400_never_a_500(
    gateway: RunningGateway, content_type: str, body: bytes, status: int
) -> None:
    response = await gateway.post("/v1/completions", body, headers={"Content-Type": content_type})
    assert response.status == status
    if status != 200:
        assert (await response.json(content_type=None))["error"]["message"]


async def test_huge_max_tokens_and_thousands_of_messages_pass_through_without_trouble(
    gateway: RunningGateway, standin: StandIn
) -> None:
    huge = await gateway.post("/v1/completions", {**BODY, "max_tokens": 10**12})
    assert huge.status == 200  # the upstream decides what it can serve
    messages = [{"role": "user", "content": f"m{i}"} for i in range(5000)]
    many = await gateway.post("/v1/chat/completions", {"model": "standin", "messages": messages})
    assert many.status == 200
    assert len(standin.bodies_seen[-1]["messages"]) == 5000


async def test_n_over_the_limit_is_rejected(gateway: RunningGateway) -> None:
    response = await gateway.post("/v1/completions", {**BODY, "n": 129})
    assert response.status == 400


async def test_headers_over_the_limit_are_refused_with_a_4xx(gateway: RunningGateway) -> None:
    response = await gateway.post("/v1/completions", BODY, headers={"X-Huge": "x" * 20000})
    assert 400 <= response.status < 500


async def test_a_slow_sender_does_not_stop_others_being_served(gateway: RunningGateway) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps(BODY)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]
    )
    await writer.drain()
    for _ in range(20):  # the slow request is half-sent; everyone else is answered meanwhile
        health = await gateway.session.get(gateway.url + "/healthz")
        assert health.status == 200
        assert (await gateway.post("/v1/completions", BODY)).status == 200
    writer.write(body[5:])
    await writer.drain()
    status_line = await reader.readline()
    assert b" 200 " in status_line
    writer.close()


async def test_stream_with_null_stream_options_is_streamed_not_a_500(gateway: RunningGateway) -> None:
    response = await gateway.post("/v1/completions", {**BODY, "stream": True, "stream_options": None})
    assert response.status == 200
    events = (await response.read()).split(b"\n\n")
    assert events[0].startswith(b"data: {") and b"data: [DONE]" in events


async def _raw_exchange(gateway: RunningGateway, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` bytes as they are; the status, headers and body of the answer."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # the gateway closes after a parser error
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"FROB /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n",  # unknown method
        b"GET\r\n\r\n",  # malformed request line
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",  # bad header
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",  # bad header value
        b"GET /healthz HTTP/9.9x\r\nHost: x\r\n\r\n",  # bad version
    ],
    ids=["unknown-method", "request-line", "header-line", "content-length", "version"],
)
async def test_requests_the_http_parser_rejects_get_an_openai_style_json_error(
    gateway: RunningGateway, request_bytes: bytes
) -> None:
    status, headers, body = await _raw_exchange(gateway, request_bytes)
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    assert int(headers["content-length"]) == len(body)
    error = orjson.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "bad_http_request"
    assert error["message"]
    health = await gateway.session.get(gateway.url + "/healthz")  # and the gateway serves on
    assert health.status == 200
