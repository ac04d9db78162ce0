"""OpenAI-style errors: every failure a client sees is ``{"error": {message, type, code}}``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import orjson
from aiohttp import web


class GatewayError(Exception):
    """A failure with the HTTP status and OpenAI error fields a client should get."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = dict(headers or {})

    def payload(self) -> dict[str, dict[str, str | None]]:
        """The JSON body, as a dict (records keep it too)."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    def response(self) -> web.Response:
        """The aiohttp response carrying this error."""
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.payload()),
            content_type="application/json",
            headers=self.headers,
        )


def bad_request(message: str, code: str = "invalid_request") -> GatewayError:
    """400: the client sent something the gateway cannot use."""
    return GatewayError(400, message, "invalid_request_error", code)


class UpstreamError(GatewayError):
    """The upstream failed: unreachable (502), too slow (504) or said no (its status).

    ``retry_after`` is the wait the upstream asked for (``Retry-After`` or
    ``retry-after-ms``), in seconds, when it named one.
    """

    def __init__(
        self, status: int, message: str, code: str, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(status, message, "upstream_error", code)
        self.retryable = retryable
        self.retry_after = retry_after


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds an upstream asked us to wait, from ``retry-after-ms`` or ``Retry-After``."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            try:  # an HTTP date
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                continue
    return None


def shutting_down() -> GatewayError:
    """503 for an upstream call the gateway cut because it is stopping and the deadline passed."""
    return GatewayError(503, "gateway shutting down", "service_unavailable", "shutting_down")


def upstream_unreachable(detail: str) -> UpstreamError:
    """502: no connection, or it broke before a whole answer arrived."""
    return UpstreamError(502, f"upstream unreachable: {detail}", "upstream_unreachable", True)


def upstream_timeout(seconds: float) -> UpstreamError:
    """504: the upstream did not answer within its timeout."""
    return UpstreamError(504, f"upstream timed out after {seconds:g}s", "upstream_timeout", True)


def upstream_status(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> UpstreamError:
    """The upstream's own error status, with its message when it gave one."""
    message = body[:2000].decode("utf-8", "replace")
    try:
        parsed = orjson.loads(body)
        detail = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        if isinstance(detail, dict):
            message = str(detail.get("message") or detail.get("detail") or message)
        elif isinstance(detail, str):
            message = detail
    except orjson.JSONDecodeError:
        pass
    return upstream_failure(status, message, headers)


def upstream_failure(status: int, message: str, headers: Mapping[str, str] | None = None) -> UpstreamError:
    """An upstream's error status as the client sees it: retryable when it may pass (408, 429, 5xx)."""
    retryable = status in (408, 429) or status >= 500
    return UpstreamError(
        status,
        f"upstream returned {status}: {message}",
        "upstream_error",
        retryable,
        retry_after_of(headers or {}),
    )


def not_supported(endpoint: str, provider: str) -> GatewayError:
    """501 for an endpoint a provider does not offer (hosted providers have no tokenizer endpoints)."""
    return GatewayError(
        501, f"{endpoint} is not supported by provider {provider}", "invalid_request_error", "not_supported"
    )
