"""Metrics, one module each, all behind :class:`scorer.metrics.base.Metric` and one registry.

Importing this package imports every metric module in it, so a new metric is
one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

from scorer.metrics.base import Metric, Sample, register_metric, registry

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def get_metric(name: str) -> Metric | None:
    """The metric registered as ``name``, or None."""
    return registry().get(name)


__all__ = ["Metric", "Sample", "get_metric", "register_metric", "registry"]
