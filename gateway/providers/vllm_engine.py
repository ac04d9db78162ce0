"""An in-process vLLM engine (``provider: vllm``): prompts go straight into its continuous batching.

The answers come from vLLM's own OpenAI serving layer (the objects its HTTP
server routes to), built in this process from the same command-line arguments
the server would parse, so a completion here is the one the vLLM server would
give: same defaults, same echo/logprobs handling, same errors. Only the HTTP
hop is gone. ``vllm`` is imported when such a model is configured, never at
gateway start otherwise; this module targets vLLM 0.32's layout.

The engine starts in the background as soon as the provider is made (30-40 s
on a CPU); calls wait for it. A failed start fails every call with 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import orjson

from gateway.config import ModelConfig
from gateway.errors import GatewayError, UpstreamError, not_supported, upstream_failure, upstream_timeout
from gateway.providers import register
from gateway.providers.base import Capabilities, Reply

log = logging.getLogger("gateway.vllm")

_COMPLETIONS = "/v1/completions"
_CHAT = "/v1/chat/completions"
_TOKENIZER = ("/tokenize", "/detokenize", "/tokenizer_info")


def engine_argv(model: ModelConfig) -> list[str]:
    """``engine_args`` as the vLLM server's command line (``max_model_len: 2048`` → ``--max-model-len 2048``).

    Parsing them with vLLM's own parser gives this engine exactly the server's
    defaults. The model is served under the name the gateway sends upstream.
    """
    args = dict(model.engine_args)
    if "model" not in args:
        raise ValueError(f"model {model.name!r}: provider vllm needs engine_args.model (a path or hub name)")
    args.setdefault("served_model_name", model.target_model)
    argv: list[str] = []
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            argv += [flag, orjson.dumps(value).decode()]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


class _Serving:
    """vLLM's engine client and the serving objects its API server would route to."""

    def __init__(self, engine: Any, state: Any) -> None:
        self.engine = engine
        self.completion = state.openai_serving_completion
        self.chat = state.openai_serving_chat
        self.tokenization = state.serving_tokenization


@register("vllm")
class VLLMEngineProvider(Capabilities):
    """Serves completions, chat and the tokenizer endpoints from an engine in this process."""

    endpoints = frozenset({_COMPLETIONS, _CHAT, *_TOKENIZER})
    local = True

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.argv = engine_argv(model)
        self._stack = AsyncExitStack()
        self._starting: asyncio.Task[_Serving] = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> _Serving:
        # As vLLM's own CLI does: forking a process that runs an event loop and threads is unsafe.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM

        args = make_arg_parser(FlexibleArgumentParser()).parse_args(self.argv)
        validate_parsed_serve_args(args)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        log.info("starting the in-process vLLM engine for %s: %s", self.model.name, " ".join(self.argv))

        def build() -> Any:
            # Blocking for half a minute while the engine core loads: off the event loop.
            # AsyncLLM starts its output tasks lazily on the first request, in this loop.
            usage = UsageContext.OPENAI_API_SERVER
            return AsyncLLM.from_vllm_config(
                vllm_config=engine_args.create_engine_config(usage_context=usage),
                usage_context=usage,
                enable_log_requests=engine_args.enable_log_requests,
                aggregate_engine_logging=engine_args.aggregate_engine_logging,
                disable_log_stats=engine_args.disable_log_stats,
            )

        engine = await asyncio.to_thread(build)
        self._stack.callback(engine.shutdown)
        state = State()
        await init_app_state(engine, state, args, await engine.get_supported_tasks())
        log.info("the in-process vLLM engine for %s is ready", self.model.name)
        return _Serving(engine, state)

    async def ready(self) -> None:
        """Wait until the engine serves (or raise why it cannot)."""
        await self._serving()

    async def _serving(self) -> _Serving:
        try:
            return await asyncio.shield(self._starting)
        except Exception as exc:
            raise UpstreamError(
                503, f"the in-process vLLM engine failed to start: {exc}", "engine_unavailable", False
            ) from exc

    async def call(self, endpoint: str, body: dict[str, Any] | None) -> Reply:
        """The serving layer's answer, as the JSON the vLLM server would send."""
        serving = await self._serving()
        try:
            result = await asyncio.wait_for(self._call(serving, endpoint, body), self.model.timeout_s)
        except asyncio.TimeoutError as exc:
            raise upstream_timeout(self.model.timeout_s) from exc
        return Reply(_dumps(_checked(result).model_dump()))

    async def _call(self, serving: _Serving, endpoint: str, body: dict[str, Any] | None) -> Any:
        if endpoint == "/tokenizer_info":
            return await _guarded(serving.tokenization.get_tokenizer_info())
        if body is None:
            raise _unsupported(endpoint)
        if endpoint in (_COMPLETIONS, _CHAT):
            if body.get("stream"):
                raise _bad_request("use stream() for a streaming request")
            return await self._generate(serving, endpoint, body)
        if endpoint == "/tokenize":
            from pydantic import TypeAdapter
            from vllm.entrypoints.serve.tokenize.protocol import TokenizeRequest

            request = _parsed(lambda: TypeAdapter(TokenizeRequest).validate_python(body))
            return await _guarded(serving.tokenization.create_tokenize(request, None))
        if endpoint == "/detokenize":
            from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest

            request = _parsed(lambda: DetokenizeRequest.model_validate(body))
            return await _guarded(serving.tokenization.create_detokenize(request, None))
        raise _unsupported(endpoint)

    async def _generate(self, serving: _Serving, endpoint: str, body: dict[str, Any]) -> Any:
        if endpoint == _COMPLETIONS:
            from vllm.entrypoints.openai.completion.protocol import CompletionRequest

            request = _parsed(lambda: CompletionRequest.model_validate(body))
            return await _guarded(serving.completion.create_completion(request, None))
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        request = _parsed(lambda: ChatCompletionRequest.model_validate(body))
        return await _guarded(serving.chat.create_chat_completion(request, None))

    async def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The serving layer's event payloads; an error event becomes an ``UpstreamError``."""
        if endpoint not in (_COMPLETIONS, _CHAT):
            raise _unsupported(endpoint)
        serving = await self._serving()
        result = await self._generate(serving, endpoint, {**body, "stream": True})
        if not hasattr(result, "__aiter__"):
            _checked(result)
            raise UpstreamError(500, "vLLM answered a stream with one response", "upstream_error", False)
        async for event in result:
            for payload in _payloads(event):
                if payload == b"[DONE]":
                    return
                if payload.startswith(b'{"error"'):
                    raise _error_from_payload(payload)
                yield payload

    async def close(self) -> None:
        """Stop the engine (and its engine-core process)."""
        if not self._starting.done():
            self._starting.cancel()
        await self._stack.aclose()


def _dumps(data: Any) -> bytes:
    """JSON as the vLLM server writes it (integer token-id keys become strings)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an integer past 64 bits (a tokenizer's "unlimited" model_max_length)
        return json.dumps(data).encode()


def _payloads(event: str) -> list[bytes]:
    """The ``data:`` payloads in one chunk of vLLM's event stream (``data: {...}\\n\\n``)."""
    payloads = []
    for block in event.split("\n\n"):
        data = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            payloads.append("\n".join(data).encode())
    return payloads


async def _guarded(awaitable: Any) -> Any:
    """Await a serving call, turning what it raises into the status vLLM's server would send."""
    try:
        return await awaitable
    except GatewayError:
        raise
    except Exception as exc:
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        raise _upstream(create_error_response(exc)) from exc


def _parsed(parse: Any) -> Any:
    """A vLLM request model from a body; invalid bodies are 400s, as the server's validation gives."""
    from pydantic import ValidationError

    try:
        return parse()
    except ValidationError as exc:
        raise _bad_request(str(exc)) from exc


def _checked(result: Any) -> Any:
    """``result`` unless it is vLLM's ``ErrorResponse``."""
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if isinstance(result, ErrorResponse):
        raise _upstream(result)
    return result


def _upstream(error: Any) -> UpstreamError:
    # The one mapping every provider shares: 429 and 5xx retried, other 4xx not.
    return upstream_failure(int(error.error.code), str(error.error.message))


def _error_from_payload(payload: bytes) -> UpstreamError:
    error = orjson.loads(payload).get("error") or {}
    return upstream_failure(int(error.get("code") or 500), str(error.get("message") or "error event"))


def _bad_request(message: str) -> UpstreamError:
    return upstream_failure(400, message)


def _unsupported(endpoint: str) -> GatewayError:
    return not_supported(endpoint, "vllm")
