"""Providers: the one place that knows how to talk to each kind of upstream, found by name in a registry.

A provider is a class in a module of this package, registered with
:func:`register` under the name a config's ``provider:`` uses, and saying
what it can do as class attributes (see :class:`~gateway.providers.base.Capabilities`).
Adding one is one new module here: every module of the package is imported
when the registry is first read, and none of them imports its SDK or engine
at module level (litellm and vLLM are imported when a model needs them), so
a gateway in front of OpenAI-compatible servers alone never pays for either.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.providers.base import Provider

_REGISTRY: dict[str, type[Any]] = {}
_discovered = False

P = TypeVar("P", bound=type[Any])


def register(name: str) -> Callable[[P], P]:
    """Class decorator: serve models whose ``provider:`` is ``name`` with this class."""

    def add(cls: P) -> P:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _discover() -> None:
    global _discovered
    if not _discovered:
        _discovered = True
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")


def provider_class(name: str) -> type[Any]:
    """The class registered as ``name``; ``KeyError`` naming the registered ones when there is none."""
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown provider {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def provider_names() -> list[str]:
    """Every registered provider name."""
    _discover()
    return sorted(_REGISTRY)


def make_provider(model: Any, session: Any) -> Provider:
    """The provider that serves ``model`` (a ``ModelConfig``), sharing the app's HTTP ``session``."""
    instance: Provider = provider_class(model.provider).create(model, session)
    return instance
