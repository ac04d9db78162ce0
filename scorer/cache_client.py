"""`scorer run` without a gateway: the client's questions answered from the cache, as `scorer score` reads it.

When nothing listens at the gateway's address, a run whose every answer is
already cached (an earlier `scorer run`, or lm-eval through the gateway) needs
no gateway: this client answers ``/tokenizer_info``, ``/tokenize`` and every
request from the cache by key, and sends nothing. The model's cache namespace,
which keys need and only the gateway's ``GET /v1/models`` or the run's
manifest know, comes from the manifest. A request the cache lacks ends the run
with one line saying how many are missing and that the gateway is down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from scorer.errors import GatewayUnreachable, MissingResponses
from scorer.manifest import Manifest
from scorer.requests import Request
from scorer.store import ResponseReader
from scorer.tokenizer import tokenize_key, tokenizer_info_key


class CacheClient:
    """Answers what :class:`scorer.client.GatewayClient` would ask the gateway, from the cache alone."""

    def __init__(self, reader: ResponseReader, manifest: Manifest | None, why: GatewayUnreachable) -> None:
        self.reader = reader
        self.manifest = manifest
        self.why = why
        self.read = 0  # answers read from the cache

    def _remedy(self) -> str:
        return f"{self.why}; start it and run again"

    def _many(self, keys: list[str], what: str) -> dict[str, dict[str, Any]]:
        found = {key: orjson.loads(raw) for key, raw in self.reader.get_raw_many(keys).items()}
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            raise MissingResponses(what, missing, self._remedy())
        self.read += len(found)
        return found

    async def model_names(self, model: str) -> tuple[str, str]:
        """``model``'s upstream name and cache namespace, as the run's manifest recorded them.

        A judge model has only its namespace recorded; it stands for its upstream name too.
        """
        if (
            self.manifest is not None
            and self.manifest.model != model
            and model in self.manifest.judge_namespaces
        ):
            namespace = self.manifest.judge_namespaces[model]
            return namespace, namespace
        if self.manifest is None or self.manifest.model != model:
            raise GatewayUnreachable(
                f"{self.why}, and run {self.reader.run_id!r} has no manifest for model {model!r} "
                "naming its cache namespace; start the gateway"
            )
        return self.manifest.upstream_model, self.manifest.cache_namespace or self.manifest.upstream_model

    async def tokenizer_info(self, model: str, namespace: str) -> dict[str, Any]:
        """The cached ``GET /tokenizer_info`` answer."""
        key = tokenizer_info_key(namespace)
        return self._many([key], f"{model} /tokenizer_info")[key]

    async def tokenize(self, model: str, namespace: str, texts: Iterable[str]) -> dict[str, list[int]]:
        """Token ids of each distinct text, from the cached ``/tokenize`` answers."""
        keys = {text: tokenize_key(namespace, text) for text in dict.fromkeys(texts)}
        found = self._many(list(keys.values()), f"{model} /tokenize")
        return {text: list(found[key]["tokens"]) for text, key in keys.items()}

    async def send(
        self, requests: Iterable[Request], desc: str, label: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each distinct request's cached response, by key; none is sent."""
        return self._many(list(dict.fromkeys(r.key for r in requests)), desc)
