"""``/metrics`` for the state backend: whether state is shared right now, and how often it was not."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.state import State


class StateCollector(Collector):
    """Read from the state at every scrape (no work on the request path)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        detail = self.state.health()
        shared = GaugeMetricFamily(
            "replaygate_state_shared",
            "1 while shared state (index, single-flight, limits, samples) is in use; 0 on local fallback",
            labels=["backend"],
        )
        shared.add_metric([detail["backend"]], 1.0 if detail["shared"] else 0.0)
        fallbacks = CounterMetricFamily(
            "replaygate_state_fallbacks",
            "Shared-state calls answered from this process's own state because the store was out of reach",
            labels=["backend"],
        )
        fallbacks.add_metric([detail["backend"]], float(detail.get("fallbacks", 0)))
        outages = CounterMetricFamily(
            "replaygate_state_outages", "Times the shared-state store went out of reach", labels=["backend"]
        )
        outages.add_metric([detail["backend"]], float(detail.get("outages", 0)))
        yield from (shared, fallbacks, outages)
