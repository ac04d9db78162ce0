"""What each request cost in USD, and what a cache hit saved.

A model's price comes from, in order: its ``cost`` in the config; litellm's
model price map, read from the JSON file shipped inside the litellm package
(never fetched, and litellm itself is not imported); free when the upstream is
local (a launched server, the in-process engine, or an ``api_base`` on this
machine). A model with none of these has an unknown price: its records carry
``cost_usd: null`` rather than a made-up number.

Prices are resolved once, when the gateway starts; pricing a record is two
multiplications.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlparse

import orjson

from cache.record import PAID, Record
from gateway.config import ModelConfig
from gateway.tokens import input_tokens, trusted_usage

log = logging.getLogger("gateway.pricing")

BATCH_PRICE_FACTOR = 0.5  # OpenAI's and Anthropic's batch APIs answer at half the online price
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "host.docker.internal"}
_PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True)
class Price:
    """USD per token, and where the figure came from (config, litellm or local)."""

    input_per_token: float
    output_per_token: float
    source: str
    batch_input_per_token: float | None = None  # None: BATCH_PRICE_FACTOR of the online price
    batch_output_per_token: float | None = None

    def of(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        """The cost of that many tokens (at the batch price when ``batch``), to a billionth of a dollar."""
        per_in, per_out = self.input_per_token, self.output_per_token
        if batch:
            per_in = (
                self.batch_input_per_token
                if self.batch_input_per_token is not None
                else per_in * BATCH_PRICE_FACTOR
            )
            per_out = (
                self.batch_output_per_token
                if self.batch_output_per_token is not None
                else per_out * BATCH_PRICE_FACTOR
            )
        return round(prompt_tokens * per_in + completion_tokens * per_out, 9)


@lru_cache(maxsize=1)
def litellm_price_map() -> Mapping[str, Any]:
    """litellm's model price map as shipped in its package, read without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / _PRICE_MAP_FILE
        if path.is_file():
            return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]
    if spec is None:
        return {}
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the map
    import litellm

    return dict(litellm.model_cost)


def is_local(model: ModelConfig) -> bool:
    """Whether the model runs on this machine (and so costs nothing per token)."""
    if model.capabilities.local or model.launch is not None:
        return True
    host = urlparse(model.api_base or "").hostname or ""
    return host in _LOCAL_HOSTS or host.startswith("127.")


def resolve_price(model: ModelConfig) -> Price | None:
    """The price of ``model``'s tokens, or None when nothing says what it is."""
    if model.cost is not None:
        per_in, per_out, factor = (
            model.cost.input_per_mtok / 1e6,
            model.cost.output_per_mtok / 1e6,
            model.cost.batch_price_factor,
        )
        return Price(per_in, per_out, "config", per_in * factor, per_out * factor)
    if is_local(model):
        return Price(0.0, 0.0, "local")
    target = model.target_model
    prices = litellm_price_map()
    for name in (target, target.split("/", 1)[-1]):
        entry = prices.get(name)
        if isinstance(entry, dict) and "input_cost_per_token" in entry:
            batch_in, batch_out = (
                entry.get("input_cost_per_token_batches"),
                entry.get("output_cost_per_token_batches"),
            )
            return Price(
                float(entry.get("input_cost_per_token") or 0.0),
                float(entry.get("output_cost_per_token") or 0.0),
                "litellm",
                float(batch_in) if batch_in is not None else None,  # litellm's batch rates, where it has them
                float(batch_out) if batch_out is not None else None,
            )
    return None


def count_usage(request: Any, response: Any, tiktoken_model: str | None = None) -> dict[str, int]:
    """Prompt and completion tokens counted from the bodies, for an upstream that sent no usage."""
    prompt = input_tokens(request if isinstance(request, dict) else None, tiktoken_model)
    texts = []
    for choice in response.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        if isinstance(text, str) and text:
            texts.append(text)
    completion = input_tokens({"prompt": " ".join(texts)}, tiktoken_model) if texts else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Priced(TypedDict, total=False):
    """The fields pricing adds to (or corrects in) a :class:`cache.record.Record`."""

    cost_usd: float | None
    cost_saved_usd: float | None
    usage: dict[str, int] | None
    usage_counted: bool


class Costs:
    """Prices every record of the configured models."""

    def __init__(self, models: Iterable[ModelConfig]) -> None:
        self.prices: dict[str, Price | None] = {}
        self._tiktoken: dict[str, str | None] = {}
        for model in models:
            price = self.prices[model.name] = resolve_price(model)
            self._tiktoken[model.name] = model.target_model if model.capabilities.tiktoken else None
            if price is None:
                log.warning("no price known for model %s: its cost is recorded as null", model.name)

    def of(self, model: ModelConfig, record: Record, response: Any) -> Priced:
        """The fields a record gains: ``cost_usd``, ``cost_saved_usd`` and, when counted, ``usage``.

        An upstream's ``usage`` with counts that are not counts (see
        :func:`gateway.tokens.trusted_usage`) is replaced by the gateway's own.

        A miss or batched answer paid its tokens (a ``batch`` one at the batch
        price); a hit or coalesced answer
        paid nothing and saved what a miss would have cost. Failures cost 0.
        """
        fields: Priced = {}
        usage = trusted_usage(record["usage"])
        if usage is None and record["usage"] is not None:
            fields["usage"] = None  # counts nothing downstream can add up; recounted below if it can be
        if record["status"] != 200:
            fields["cost_usd"], fields["cost_saved_usd"] = 0.0, 0.0
            return fields
        if usage is None and isinstance(response, dict) and "choices" in response:
            usage = fields["usage"] = count_usage(record["request"], response, self._tiktoken.get(model.name))
            fields["usage_counted"] = True
        price = self.prices.get(model.name)
        if price is None:
            cost: float | None = None
        elif usage is not None:
            cost = price.of(usage["prompt_tokens"], usage["completion_tokens"], record["served"] == "batch")
        else:
            cost = 0.0
        if record["served"] in PAID:
            fields["cost_usd"], fields["cost_saved_usd"] = cost, 0.0
        else:
            fields["cost_usd"], fields["cost_saved_usd"] = 0.0, cost
        return fields
