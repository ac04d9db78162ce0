"""The batch file formats: OpenAI's input lines read and checked, output and error lines written.

An input line is ``{"custom_id", "method": "POST", "url", "body"}``; every
line's ``url`` is the batch's endpoint and its body what that endpoint takes
online. An output line is ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}``; an error line carries ``error``
(``code``, ``message``) and no response.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.endpoints import validate_body
from gateway.errors import GatewayError, bad_request

# What a line that never got an answer says, by how its upstream batch ended.
UNANSWERED = {
    "expired": (504, "batch_expired", "the request was not run before the batch's completion window expired"),
    "cancelled": (499, "batch_cancelled", "the batch was cancelled before the request was run"),
    "failed": (502, "batch_failed", "the provider failed the batch"),
    "completed": (502, "batch_missing_result", "the provider's batch finished without an answer for it"),
}


# Endpoints a client may expect in a batch that the lane does not answer, and why.
NOT_BATCHED = {
    "/v1/embeddings": (
        "the batch lane does not answer /v1/embeddings yet (its cache is per input, the lane's per"
        " request): send embeddings to /v1/embeddings online, where only the inputs not cached go upstream"
    ),
}


def refuse_unbatched(url: Any, where: str) -> None:
    """A 400 saying why, when ``url`` is an endpoint the lane does not answer (``where``: what named it)."""
    if isinstance(url, str) and url in NOT_BATCHED:
        raise bad_request(f"{where}: {NOT_BATCHED[url]}", "unsupported_batch_endpoint")


def parse_input(content: bytes, endpoint: str) -> list[tuple[str, dict[str, Any]]]:
    """Each line's ``custom_id`` and body, in order; a 400 naming the first line that is wrong."""
    lines: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"batch input line {number} is not JSON: {exc}", "invalid_batch_line") from exc
        if not isinstance(line, dict):
            raise bad_request(f"batch input line {number} is not a JSON object", "invalid_batch_line")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise bad_request(f"batch input line {number} has no custom_id", "invalid_batch_line")
        if custom_id in seen:
            raise bad_request(
                f"batch input line {number}: custom_id {custom_id!r} is repeated", "duplicate_custom_id"
            )
        seen.add(custom_id)
        refuse_unbatched(line.get("url"), f"batch input line {number} ({custom_id!r})")
        if line.get("method", "POST") != "POST" or line.get("url") != endpoint:
            raise bad_request(
                f"batch input line {number} must be POST {endpoint}, the batch's endpoint",
                "invalid_batch_line",
            )
        try:
            body = validate_body(endpoint, line.get("body"))
        except GatewayError as exc:
            raise bad_request(
                f"batch input line {number}: {exc.message}", exc.code or "invalid_batch_line"
            ) from exc
        if body.get("stream"):
            raise bad_request(f"batch input line {number}: a batch line cannot stream", "invalid_batch_line")
        lines.append((custom_id, body))
    if not lines:
        raise bad_request("the batch input file has no lines", "empty_batch")
    return lines


def output_line(line_id: str, custom_id: str, key: str, body: bytes) -> bytes:
    """A line of the output file: an answer, as its online response body."""
    response = {"status_code": 200, "request_id": key, "body": orjson.Fragment(body)}
    return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": None}) + b"\n"


def error_line(line_id: str, custom_id: str, error: dict[str, Any] | None) -> bytes:
    """A line of the error file: why this request has no answer."""
    return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": None, "error": error}) + b"\n"


def read_results(*contents: bytes) -> dict[str, dict[str, Any]]:
    """A provider's output and error files, line by ``custom_id`` (lines that are not JSON are skipped)."""
    results: dict[str, dict[str, Any]] = {}
    for content in contents:
        for raw in content.splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                results.setdefault(line["custom_id"], line)
    return results


def answer_of(line: dict[str, Any] | None) -> Any:
    """The response body of a result line that answered (status 200), else None."""
    response = line.get("response") if line else None
    if isinstance(response, dict) and response.get("status_code") == 200:
        return response.get("body")
    return None


def failure_of(line: dict[str, Any] | None, batch_status: str) -> GatewayError:
    """Why a result line (or its absence, in a batch that ended ``batch_status``) gave no answer."""
    error = line.get("error") if line else None
    response = line.get("response") if line else None
    if not isinstance(error, dict) and isinstance(response, dict):
        body = response.get("body")
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            status = response.get("status_code")
            code = error.get("code") or f"upstream_{status}"
            return GatewayError(
                status if isinstance(status, int) else 502,
                str(error.get("message")),
                "upstream_error",
                str(code),
            )
    if isinstance(error, dict) and error.get("code"):
        status = UNANSWERED.get(batch_status, UNANSWERED["failed"])[0]
        return GatewayError(
            status, str(error.get("message") or error["code"]), "batch_error", str(error["code"])
        )
    status, code, message = UNANSWERED.get(batch_status, UNANSWERED["failed"])
    return GatewayError(status, message, "batch_error", code)
