"""The one fold of run records into counts, shared by ``/metrics``, the status line and ``gateway report``.

Every figure both of them show (requests by how served and by status,
tokens, cost, what the cache saved, requests without a known price, errors
and failed attempts by cause) is counted here and nowhere else, so the
Prometheus counters and a report of the same records cannot disagree.

Definitions:

* tokenizer calls (``/tokenize`` and friends) count as requests and by status,
  but apart from completions: not in ``served``, the hit ratio or ``unpriced``;
* ``unpriced``: a successful completion whose cost (for a paid answer) or
  saving (for a copy) is unknown (``null``) because the model has no price;
* a request's ``retries`` are its attempts after the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cache.record import COPIES, PAID
from gateway.endpoints import TOKENIZER_ENDPOINTS


@dataclass(slots=True, kw_only=True)
class Counts:
    """Sums over a set of records; :meth:`add` folds one in with a few additions."""

    requests: int = 0
    tokenizer_calls: int = 0
    served: dict[str, int] = field(default_factory=dict)  # completions by how served
    statuses: dict[int, int] = field(default_factory=dict)  # requests by HTTP status (0: none recorded)
    errors: dict[str, int] = field(default_factory=dict)  # failed requests by error code
    failed_attempts: dict[str, int] = field(default_factory=dict)  # failed upstream attempts by code
    tokens_in: int = 0
    tokens_out: int = 0
    usage_counted: int = 0  # usages the gateway counted itself
    cost_usd: float = 0.0
    batch_cost_usd: float = 0.0  # the part of ``cost_usd`` paid through the batch lane
    cost_saved_usd: float = 0.0
    unpriced: int = 0
    attempts: int = 0
    retries: int = 0

    def add(self, record: Mapping[str, Any]) -> None:
        """Fold one record in (any schema: absent fields count as nothing)."""
        get = record.get
        self.requests += 1
        served = get("served") or "?"
        status = get("status") or 0
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        completion = get("endpoint") not in TOKENIZER_ENDPOINTS
        if completion:
            self.served[served] = self.served.get(served, 0) + 1
        else:
            self.tokenizer_calls += 1
        error = get("error")
        if error:
            code = str(error.get("code") if isinstance(error, dict) else error)
            self.errors[code] = self.errors.get(code, 0) + 1
        failures = get("failed_attempts")
        if failures:
            for failure in failures:
                code = str(failure.get("code") if isinstance(failure, dict) else failure)
                self.failed_attempts[code] = self.failed_attempts.get(code, 0) + 1
        usage = get("usage")
        if isinstance(usage, dict):
            self.tokens_in += usage.get("prompt_tokens") or 0
            self.tokens_out += usage.get("completion_tokens") or 0
            if get("usage_counted"):
                self.usage_counted += 1
        cost = get("cost_usd")
        saved = get("cost_saved_usd")
        if cost:
            self.cost_usd += cost
            if served == "batch":
                self.batch_cost_usd += cost
        if saved:
            self.cost_saved_usd += saved
        elif status == 200 and completion and (cost if served in PAID else saved) is None:
            self.unpriced += 1
        attempts = get("attempts")
        if attempts:
            self.attempts += attempts
            self.retries += attempts - 1

    def merge(self, other: Counts) -> None:
        """Add another set of counts to these."""
        for name in ("requests", "tokenizer_calls", "tokens_in", "tokens_out", "usage_counted", "unpriced"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("attempts", "retries", "cost_usd", "batch_cost_usd", "cost_saved_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("served", "statuses", "errors", "failed_attempts"):
            mine: dict[Any, int] = getattr(self, name)
            for k, n in getattr(other, name).items():
                mine[k] = mine.get(k, 0) + n

    @property
    def status(self) -> dict[str, int]:
        """Requests by status class: 2xx, 4xx, 5xx (0xx: no status recorded)."""
        classes: dict[str, int] = {}
        for status, n in self.statuses.items():
            name = f"{int(status) // 100}xx"
            classes[name] = classes.get(name, 0) + n
        return classes

    @property
    def completions(self) -> int:
        """Requests other than tokenizer calls."""
        return self.requests - self.tokenizer_calls

    @property
    def cached(self) -> int:
        """Completions answered without an upstream call of their own (hit or coalesced)."""
        return sum(self.served.get(s, 0) for s in COPIES)

    @property
    def hit_ratio(self) -> float:
        """Share of completions that were :attr:`cached`."""
        return self.cached / self.completions if self.completions else 0.0

    @property
    def failed(self) -> int:
        """Requests answered with an error."""
        return sum(self.errors.values())

    @property
    def free(self) -> bool:
        """Nothing cost or saved anything, and no answer lacked a price: a free (local) model."""
        return self.cost_usd == 0 and self.cost_saved_usd == 0 and self.unpriced == 0
