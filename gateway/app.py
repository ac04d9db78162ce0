"""The aiohttp application: routes, and the resources that live as long as it does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web

from cache.index import ResponseIndex
from cache.private import keep_private
from cache.records import RecordWriter
from gateway.auth import Grant, KeyRing
from gateway.batches.lane import BatchLane
from gateway.batches.routes import BatchRoutes
from gateway.config import GatewayConfig
from gateway.dashboard import Dashboard
from gateway.endpoints import ENDPOINTS, Endpoint, roots_of
from gateway.errors import GatewayError
from gateway.handlers import Handlers
from gateway.launcher import launched_by, start_all, stop_all
from gateway.metrics import Metrics
from gateway.parser_errors import answer_parser_errors_in_json
from gateway.pipeline import Pipeline
from gateway.pricing import Costs
from gateway.providers import make_provider
from gateway.redaction import Redactor
from gateway.state import make_state
from gateway.state.metrics import StateCollector
from gateway.upstream import Upstream

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PIPELINE = web.AppKey("pipeline", Pipeline)
METRICS = web.AppKey("metrics", Metrics)
BATCHES = web.AppKey("batches", BatchLane)


REDACTOR = web.AppKey("redactor", Redactor)


def openai_errors(redactor: Redactor) -> Any:
    """Every failure leaves as OpenAI-style JSON, never as a bare 500 page, never with a secret."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            exc.message = redactor.scrub_text(exc.message)
            return exc.response()
        except web.HTTPException as exc:
            code = "not_found" if exc.status == 404 else "http_error"
            return GatewayError(
                exc.status, f"{exc.reason}: {request.method} {request.path}", "invalid_request_error", code
            ).response()
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return GatewayError(500, "internal gateway error", "server_error", "internal").response()

    return middleware


def create_app(config: GatewayConfig) -> web.Application:
    """The gateway for ``config``; upstreams are launched and stores opened on start-up."""
    redactor = Redactor([key for m in config.models if (key := m.api_key())])
    app = web.Application(middlewares=[openai_errors(redactor)], client_max_size=config.max_body_bytes)
    app[REDACTOR] = redactor
    answer_parser_errors_in_json(app)
    keys = KeyRing({k.sha256: Grant(k.name, frozenset(k.models), tuple(k.runs)) for k in config.keys})
    handlers = Handlers(config, keys, redactor)
    batch_routes = BatchRoutes(handlers)
    app[METRICS] = Metrics()
    _add_routes(app, handlers, batch_routes, app[METRICS])
    app.cleanup_ctx.append(partial(_resources, config, handlers, batch_routes, redactor))
    app.on_shutdown.append(partial(_drain_upstream_work, config))  # before cleanup closes the stores
    return app


async def _drain_upstream_work(config: GatewayConfig, app: web.Application) -> None:
    """Let the upstream calls in flight finish (up to ``shutdown_timeout_s``), each recorded."""
    pipeline = app.get(PIPELINE)
    if pipeline is not None:
        await pipeline.drain(config.shutdown_timeout_s)


async def _resources(  # type: ignore[no-untyped-def]
    config: GatewayConfig,
    handlers: Handlers,
    batch_routes: BatchRoutes,
    redactor: Redactor,
    app: web.Application,
):
    keep_private()  # before the first folder, shard, index file or launch log is created
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        json_serialize=None,  # type: ignore[arg-type]
    )
    launched = launched_by(config)
    index = ResponseIndex(config.cache_dir)
    state = make_state(config.state)
    records = RecordWriter(
        config.cache_dir, config.records.fsync, config.records.fsync_interval_s, scrub=redactor.scrub
    )
    try:
        await start_all(launched)  # the state's Redis, if launched, before the state connects to it
        await state.start()
        upstreams = {m.name: Upstream(m, make_provider(m, session), redactor) for m in config.models}
        for m in config.models:  # one set of limits for the fleet (or a share of them per process)
            upstreams[m.name].scheduler.share(state.limiter(m), state.replicas)
        await asyncio.gather(*(u.provider.ready() for u in upstreams.values()))  # healthy means serving
        metrics = app[METRICS]
        handlers.pipeline = app[PIPELINE] = Pipeline(
            state.index(index), records, upstreams, Costs(config.models), metrics, state
        )
        metrics.watch(upstreams)
        metrics.registry.register(StateCollector(state))
        batch_routes.lane = app[BATCHES] = BatchLane(config, handlers.pipeline, session)
        await app[BATCHES].start()  # resumes the batches a previous gateway left unfinished
        yield
        await app[BATCHES].stop()
        for model_upstream in upstreams.values():
            await model_upstream.close()
    finally:
        await stop_all(launched)
        await session.close()
        records.close()
        index.close()
        await state.close()


def _add_routes(
    app: web.Application, handlers: Handlers, batch_routes: BatchRoutes, metrics: Metrics
) -> None:
    """A route per row of the endpoint table, at the root and (where it says so) under every run."""
    router = app.router

    async def serve_metrics(endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
        return await metrics.handle(request)

    own = {"metrics": serve_metrics}
    for endpoint in ENDPOINTS:
        handler = (
            own.get(endpoint.handler)
            or getattr(handlers, endpoint.handler, None)
            or getattr(batch_routes, endpoint.handler)
        )
        for root in roots_of(endpoint):
            router.add_route(endpoint.method, root + endpoint.path, partial(handler, endpoint))
    Dashboard(handlers.config.cache_dir).add_routes(router)
    router.add_route("*", "/runs/{tail:.*}", handlers.bad_run)
