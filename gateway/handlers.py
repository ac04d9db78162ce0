"""HTTP handlers: parse and check the request, hand a :class:`Call` to the pipeline, shape the reply."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from cache.embeddings import inputs_of
from cache.keys import is_sampled, request_key
from cache.runs import DEFAULT_RUN, BadRunId, check_run_id
from gateway.auth import Grant, KeyRing, check, presented_key
from gateway.config import GatewayConfig, ModelConfig
from gateway.endpoints import Endpoint, validate_body
from gateway.errors import GatewayError, bad_request
from gateway.openapi import openapi as describe
from gateway.pipeline import Answer, CacheMode, Call, Pipeline, task_of
from gateway.redaction import Redactor

JSON = "application/json"


class Handlers:
    """The gateway's routes, bound to one config and one pipeline."""

    pipeline: Pipeline  # set when the app starts (it needs the event loop)

    def __init__(self, config: GatewayConfig, keys: KeyRing, redactor: Redactor) -> None:
        self.config = config
        self.keys = keys
        self.redactor = redactor
        self._openapi_body = orjson.dumps(describe(config))
        self._model_entries = {m.name: _model_entry(m) for m in config.models}
        self._models_body = orjson.dumps({"object": "list", "data": list(self._model_entries.values())})

    # -- routes ---------------------------------------------------------------

    async def health(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """Liveness: answers without touching disk or upstream; says where shared state is, when it is."""
        pipeline = getattr(self, "pipeline", None)
        if pipeline is None or (pipeline.state.backend == "local" and pipeline.state.replicas == 1):
            return web.Response(body=b'{"status":"ok"}', content_type=JSON)
        detail = {"status": "ok", "state": pipeline.state.health()}
        return web.Response(body=orjson.dumps(detail), content_type=JSON)

    async def openapi(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """This gateway's OpenAPI description."""
        return web.Response(body=self._openapi_body, content_type=JSON)

    async def models(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """The configured models, as clients name them."""
        check(self._grant(request), None, run_of(request))
        return web.Response(body=self._models_body, content_type=JSON)

    async def model(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """One configured model (``client.models.retrieve``), or a 404 naming the ones there are."""
        grant = self._grant(request)
        model = self.model_named(request.match_info["model_id"])
        check(grant, model.name, run_of(request))
        return web.Response(body=orjson.dumps(self._model_entries[model.name]), content_type=JSON)

    async def _model_call(self, endpoint: Endpoint, request: web.Request) -> Call:
        """The call a model endpoint's request makes: its body checked, its model and run granted."""
        run_id = run_of(request)
        grant = self._grant(request)
        body = validate_body(endpoint.path, await read_json(request, self.config.max_body_bytes))
        model = self.model_named(body["model"])
        check(grant, model.name, run_id)
        return await self._call(request, run_id, endpoint.path, model, body)

    async def completion(self, endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``, ``/v1/chat/completions`` and ``/v1/responses``, cached."""
        call = await self._model_call(endpoint, request)
        if call.stream:
            return await self._stream(request, call)
        answer = await self.pipeline.answer(call)
        return self._answer_response(call, answer)

    async def embeddings(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``, cached per input: only the inputs not cached go upstream."""
        call = await self._model_call(endpoint, request)
        assert call.body is not None
        inputs = inputs_of(call.body)
        salt = request.headers.get("X-Cache-Salt")
        keys = [_key(endpoint.path, call.model, {**call.body, "input": i}, salt) for i in inputs]
        answer = await self.pipeline.embed(call, inputs, keys)
        return self._answer_response(call, answer)

    async def tokenizer(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """``/tokenizer_info``, ``/tokenize``, ``/detokenize``: asked of the model's upstream, cached."""
        run_id = run_of(request)
        grant = self._grant(request)
        body: dict[str, Any] | None = None
        name = request.query.get("model")
        if endpoint.body is not None:
            body = validate_body(endpoint.path, await read_json(request, self.config.max_body_bytes))
            name = body.get("model") or name
        name = name or request.match_info.get("model_name")  # a model's root names it
        model = self.model_named(name) if name else self._only_model(endpoint)
        check(grant, model.name, run_id)
        call = await self._call(request, run_id, endpoint.path, model, body)
        answer = await self.pipeline.answer(call)
        return self._answer_response(call, answer)

    async def bad_run(self, request: web.Request) -> web.Response:
        """Anything under ``/runs/`` whose run-id is not a plain name."""
        run_id = request.match_info["tail"].split("/", 1)[0]
        try:
            check_run_id(run_id)
        except BadRunId as exc:
            raise bad_request(str(exc), "invalid_run_id") from exc
        raise GatewayError(404, f"no route {request.method} {request.path}", "not_found", "not_found")

    # -- helpers ----------------------------------------------------------------

    def grant(self, request: web.Request) -> Grant | None:
        """The caller's grant (for the batch routes); 401 when keys are configured and none is valid."""
        return self._grant(request)

    def _grant(self, request: web.Request) -> Grant | None:
        """The caller's grant; 401 when keys are configured and none valid is presented."""
        grant = self.keys.grant_for(request.headers)
        if grant is not None:  # a client key that got in must never be written anywhere
            self.redactor.add(presented_key(request.headers))
        return grant

    def _answer_response(self, call: Call, answer: Answer) -> web.Response:
        # Scrubbed again on the way out: a client key first presented after an answer was
        # stored is in that stored answer, and must still not reach anyone.
        body = self.redactor.scrub(answer.body)
        return web.Response(body=body, content_type=JSON, headers=_headers(call, answer.served))

    def _only_model(self, endpoint: Endpoint) -> ModelConfig:
        """The model a request that names none means: the only one, else it is ambiguous (400)."""
        if len(self.config.models) == 1:
            return self.config.models[0]
        names = ", ".join(m.name for m in self.config.models)
        raise bad_request(
            f"{endpoint.path} needs a model: several are configured ({names}); send 'model' in the body, "
            "?model= in the query, or ask under the model's root /models/NAME/",
            "model_required",
        )

    def model_named(self, name: str) -> ModelConfig:
        """The configured model ``name``, or a 404 that lists the ones there are."""
        model = self.config.model(name)
        if model is None:
            known = ", ".join(m.name for m in self.config.models)
            raise GatewayError(
                404,
                f"model '{name}' is not configured; configured models: {known}",
                "invalid_request_error",
                "model_not_found",
            )
        return model

    async def _call(
        self,
        request: web.Request,
        run_id: str,
        endpoint: str,
        model: ModelConfig,
        body: dict[str, Any] | None,
    ) -> Call:
        key = _key(endpoint, model, body or {}, request.headers.get("X-Cache-Salt"))
        pinned = sample_index(request.headers.get("X-Sample-Index"))
        call = Call(
            run_id=run_id,
            endpoint=endpoint,
            model=model,
            body=body,
            key=key,
            cache_mode=cache_mode(request.headers.get("Cache-Control", "")),
            stream=bool(body and body.get("stream")),
            task=request.headers.get("X-Task") or task_of(body),
        )
        if body is None or not is_sampled(endpoint, body):
            return call
        return await self.pipeline.sample(call, pinned)

    async def _stream(self, request: web.Request, call: Call) -> web.StreamResponse:
        served, events = await self.pipeline.answer_stream(call)
        response = web.StreamResponse(headers=_headers(call, served))
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        try:
            async for event in events:  # scrubbed like plain answers, error events included
                await response.write(self.redactor.scrub(event))
        except ConnectionError:
            return response  # the client left; the upstream call and its record go on
        await response.write_eof()
        return response


def _key(endpoint: str, model: ModelConfig, body: dict[str, Any], salt: str | None) -> str:
    try:
        return request_key(endpoint, model.key_namespace, body, salt)
    except TypeError as exc:  # JSON allows integers JSON tools cannot carry
        raise bad_request(f"the request cannot be encoded: {exc}", "invalid_number") from exc


def _model_entry(model: ModelConfig) -> dict[str, Any]:
    """A model as ``/v1/models`` lists it; ``cache_namespace`` lets a client (the scorer) key offline."""
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": model.provider,
        "upstream_model": model.target_model,
        "cache_namespace": model.key_namespace,
    }


def run_of(request: web.Request) -> str:
    """The run a request belongs to: from the URL, else ``X-Run-Id``, else ``default``."""
    run_id = request.match_info.get("run_id") or request.headers.get("X-Run-Id") or DEFAULT_RUN
    try:
        return check_run_id(run_id)
    except BadRunId as exc:
        raise bad_request(str(exc), "invalid_run_id") from exc


def sample_index(header: str | None) -> int | None:
    """The sample an ``X-Sample-Index`` header pins (a non-negative integer), or a 400."""
    if header is None:
        return None
    value = header.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise bad_request(
            f"X-Sample-Index must be a non-negative integer below 10^9, not {header[:40]!r}",
            "invalid_sample_index",
        )
    return int(value)


def cache_mode(cache_control: str) -> CacheMode:
    """``no-store`` bypasses the cache, ``no-cache`` refreshes it, anything else uses it."""
    directives = {d.strip().lower() for d in cache_control.split(",")}
    if "no-store" in directives:
        return "bypass"
    if "no-cache" in directives:
        return "refresh"
    return "use"


async def read_json(request: web.Request, limit: int) -> Any:
    """The parsed body, or a 413 past ``limit`` / a 400 when it is not JSON."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large(limit) from exc
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", "invalid_json") from exc


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"the request body is over the gateway's limit of {limit} bytes",
        "invalid_request_error",
        "body_too_large",
    )


def _headers(call: Call, served: str) -> dict[str, str]:
    headers = {"X-Cache": served, "X-Record-Key": call.key, "X-Run-Id": call.run_id}
    if call.sample is not None:
        headers["X-Sample-Index"] = str(call.sample)
    return headers
