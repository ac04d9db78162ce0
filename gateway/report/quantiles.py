"""Latency quantiles that hold on any group: exact on small groups, a bounded sketch on big ones.

A group keeps its values exactly until it has ``EXACT_LIMIT`` of them and
answers quantiles by nearest rank (the value at rank ``ceil(q·n)``, so p99 of
three values is the slowest). Past the limit it moves them into a DDSketch
(1% relative accuracy, a few kB however many records) and answers from it.
The maximum is always exact. Memory is bounded per group either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ddsketch import DDSketch

EXACT_LIMIT = 4096
RELATIVE_ACCURACY = 0.01


def nearest_rank(ordered: list[float], q: float) -> float:
    """The value at rank ``ceil(q·n)`` (1-based, at least 1) of ``ordered``, which must be sorted."""
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass
class Latencies:
    """Latencies of one group: count, exact maximum and quantiles."""

    count: int = 0
    max: float | None = None
    exact: list[float] | None = field(default_factory=list)  # None once moved into the sketch
    sketch: DDSketch | None = None

    def add(self, value: float) -> None:
        """Fold one latency in."""
        self.count += 1
        if self.max is None or value > self.max:
            self.max = value
        if self.exact is not None:
            self.exact.append(value)
            if len(self.exact) <= EXACT_LIMIT:
                return
            self.sketch = DDSketch(relative_accuracy=RELATIVE_ACCURACY)
            for kept in self.exact:
                self.sketch.add(kept)
            self.exact = None
            return
        assert self.sketch is not None
        self.sketch.add(value)

    @property
    def is_exact(self) -> bool:
        """Whether quantiles are exact (the group is small enough to keep every value)."""
        return self.exact is not None

    def quantile(self, q: float) -> float | None:
        """The latency at quantile ``q`` (0..1): exact by nearest rank, or within 1%; None when empty."""
        if self.count == 0:
            return None
        if self.exact is not None:
            self.exact.sort()  # sorted in place: later appends keep most of the order
            return round(nearest_rank(self.exact, q), 3)
        assert self.sketch is not None
        value = self.sketch.get_quantile_value(q)
        if value is None:
            return None
        return round(min(value, self.max if self.max is not None else value), 3)  # never above the max

    def summary(self) -> dict[str, float | int | bool | None]:
        """Count, p50, p95, p99 and max, as JSON."""
        return {
            "count": self.count,
            "p50": self.quantile(0.50),
            "p95": self.quantile(0.95),
            "p99": self.quantile(0.99),
            "max": None if self.max is None else round(self.max, 3),
            "exact": self.is_exact,
        }
