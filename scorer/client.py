"""The only part of the scorer that talks to a model: an HTTP client for the gateway, used by `scorer run`.

Every request goes to the run's own root (``/runs/<run_id>/…``) so the gateway
records it under the run. Requests are sent with bounded concurrency, and the
key the gateway answers with (``X-Record-Key``) is checked against the key the
scorer computed: a mismatch means `scorer score` could not find the answer
later, so it stops the run at once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tqdm import tqdm

from scorer.errors import BadInput, GatewayFailure, GatewayUnreachable
from scorer.requests import Request
from scorer.tokenizer import TOKENIZE, TOKENIZER_INFO, tokenize_body, tokenize_key, tokenizer_info_key

# The gateway's own refusal (429: its queue for the model is full) and an upstream's failure it passes on.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_PAUSE_S = 60.0  # the longest Retry-After the client honours


class _Retryable(Exception):
    """A failure the next attempt may not meet; ``retry_after``: seconds the gateway asked for."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds ``Retry-After`` asks for (the gateway sends whole seconds), or None."""
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class GatewayClient:
    """Sends a run's requests to the gateway."""

    def __init__(
        self, gateway: str, run_id: str, concurrency: int = 8, timeout_s: float = 600, attempts: int = 3
    ):
        self.root = f"{gateway.rstrip('/')}/runs/{run_id}"
        self.concurrency = concurrency
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = attempts
        self._backoff = wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.1)
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0

    async def __aenter__(self) -> GatewayClient:
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, connector=aiohttp.TCPConnector(limit=self.concurrency)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use GatewayClient as an async context manager"
        return self._session

    async def model_names(self, model: str) -> tuple[str, str]:
        """``model``'s upstream name and cache namespace (what cache keys use), from ``GET /v1/models``."""
        try:
            async with self.session.get(self.root + "/v1/models") as response:
                data = await response.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:
            raise GatewayUnreachable(f"gateway {self.root} is unreachable: {exc}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise GatewayFailure(f"gateway {self.root}: cannot list models: {exc}") from exc
        models = {m["id"]: m for m in data.get("data", []) if isinstance(m, dict) and "id" in m}
        if model not in models:
            raise BadInput(f"model {model!r} is not served by the gateway (it serves {', '.join(models)})")
        entry = models[model]
        upstream = str(entry.get("upstream_model") or model)
        return upstream, str(entry.get("cache_namespace") or upstream)

    async def _post(
        self, path: str, body: dict[str, Any], key: str, label: str | None = None
    ) -> dict[str, Any]:
        answer = await self._call("POST", path, key, data=orjson.dumps(body), label=label)
        self.sent += 1
        return answer

    async def _call(
        self,
        method: str,
        path: str,
        key: str,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        label: str | None = None,
    ) -> dict[str, Any]:
        """One request, retried (tenacity) on 429/502/503/504 and dropped connections; its key checked.

        A retry waits the exponential backoff, or what the gateway's ``Retry-After`` asks if longer.

        ``label`` is sent as ``X-Task`` (not part of the key): reports group by it, so a round shows apart.
        """
        # Every POST pins sample 0: a sampling request's key then never depends on arrival order
        # (the gateway ignores the header for requests that do not sample).
        headers = {"Content-Type": "application/json", "X-Sample-Index": "0"} if data is not None else None
        if headers is not None and label is not None:
            headers["X-Task"] = label
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(method, path, key, data, params, headers)
        except _Retryable as exc:
            raise GatewayFailure(f"gateway {self.root}{path} failed: {exc}") from exc
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(
        self,
        method: str,
        path: str,
        key: str,
        data: bytes | None,
        params: dict[str, str] | None,
        headers: dict[str, str] | None,
    ) -> dict[str, Any]:
        try:
            async with self.session.request(
                method, self.root + path, data=data, params=params, headers=headers
            ) as response:
                raw = await response.read()
                if response.status == 200:
                    self._check_key(path, response.headers.get("X-Record-Key"), key)
                    return dict(orjson.loads(raw))
                detail = f"HTTP {response.status}: {raw[:300].decode(errors='replace')}"
                if response.status in RETRY_STATUSES:
                    raise _Retryable(detail, retry_after(response.headers))
                raise GatewayFailure(f"gateway {self.root}{path} failed: {detail}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc

    def _wait(self, state: RetryCallState) -> float:
        """The backoff, but never less than the gateway asked for."""
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, _Retryable) and exc.retry_after else 0.0
        return max(float(self._backoff(state)), min(asked, MAX_PAUSE_S))

    @staticmethod
    def _check_key(path: str, got: str | None, key: str) -> None:
        if got != key:
            raise GatewayFailure(
                f"the gateway keyed a {path} request {got}, the scorer computed {key}: "
                "their canonicalisers differ, so `scorer score` could not find this answer"
            )

    async def _all(
        self, jobs: list[tuple[str, dict[str, Any], str]], desc: str, label: str | None = None
    ) -> list[dict[str, Any]]:
        limit = asyncio.Semaphore(self.concurrency)
        bar = tqdm(total=len(jobs), desc=desc, file=sys.stderr, unit="req", leave=False)

        async def one(path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
            async with limit:
                result = await self._post(path, body, key, label)
            bar.update(1)
            return result

        try:
            return await asyncio.gather(*(one(*job) for job in jobs))
        finally:
            bar.close()

    async def tokenizer_info(self, model: str, namespace: str) -> dict[str, Any]:
        """The model's ``GET /tokenizer_info`` answer (cached by the gateway like any request)."""
        return await self._call("GET", TOKENIZER_INFO, tokenizer_info_key(namespace), params={"model": model})

    async def tokenize(self, model: str, namespace: str, texts: Iterable[str]) -> dict[str, list[int]]:
        """Token ids of each distinct text, from the gateway's ``/tokenize`` (cached there)."""
        distinct = list(dict.fromkeys(texts))
        jobs = [
            (TOKENIZE, {"model": model, **tokenize_body(t)}, tokenize_key(namespace, t)) for t in distinct
        ]
        answers = await self._all(jobs, "tokenize")
        return {t: list(a["tokens"]) for t, a in zip(distinct, answers, strict=True)}

    async def send(
        self, requests: Iterable[Request], desc: str, label: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Send each distinct request once (labelled ``X-Task: label``); responses by key."""
        distinct = {r.key: r for r in requests}
        jobs = [(r.endpoint, r.body, r.key) for r in distinct.values()]
        answers = await self._all(jobs, desc, label)
        return dict(zip(distinct, answers, strict=True))
