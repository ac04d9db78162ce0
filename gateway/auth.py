"""Optional gateway keys: who may call which models under which run-ids.

Keys are kept only as sha256 digests in the config (``gateway keys hash``
prints one). Gateway keys are long random tokens, so a fast unsalted hash is
enough: it hides the key from anyone who reads the config, and a digest cannot
be replayed as a key. A presented key is looked up by its digest, so no
comparison leaks timing about the stored digests.

A grant's ``runs`` are exact run-ids, or prefixes when they say so: an entry
ending in ``-``, ``_`` or ``.`` (``team-``) or in ``*`` (``team*``, the ``*``
dropped) admits every run-id starting with it; ``*`` or ``""`` admits every
run; any other entry admits that one run-id only, so ``team`` never silently
admits ``teammate``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import GatewayError

PREFIX_ENDINGS = ("-", "_", ".")  # an entry ending so is a prefix of run-ids (and so is one ending in "*")
EVERY_RUN = ("", "*")


def run_pattern_admits(pattern: str, run_id: str) -> bool:
    """Whether a grant entry ``pattern`` admits ``run_id`` (see the module docstring)."""
    if pattern in EVERY_RUN:
        return True
    if pattern.endswith("*"):
        return run_id.startswith(pattern[:-1])
    if pattern.endswith(PREFIX_ENDINGS):
        return run_id.startswith(pattern)
    return run_id == pattern


def digest(key: str) -> str:
    """The digest a config stores for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What one key may do."""

    name: str
    models: frozenset[str]  # "*" for all
    runs: tuple[str, ...]  # run-ids, or prefixes ("team-", "team*"); "*" or "" allows every run

    def allows_model(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def allows_run(self, run_id: str) -> bool:
        return any(run_pattern_admits(p, run_id) for p in self.runs)


class KeyRing:
    """The configured keys; empty means the gateway is open."""

    def __init__(self, grants: Mapping[str, Grant]) -> None:
        self._grants = dict(grants)  # digest → grant

    @property
    def enabled(self) -> bool:
        return bool(self._grants)

    def grant_for(self, headers: Mapping[str, str]) -> Grant | None:
        """The caller's grant (None when the gateway is open); 401 without a known key."""
        if not self._grants:
            return None
        presented = presented_key(headers)
        grant = self._grants.get(digest(presented)) if presented else None
        if grant is None:
            raise GatewayError(
                401,
                "a valid gateway key is required (Authorization: Bearer <key>)",
                "authentication_error",
                "invalid_api_key",
            )
        return grant


def check(grant: Grant | None, model: str | None, run_id: str) -> None:
    """403 unless ``grant`` covers ``model`` and ``run_id`` (an open gateway allows all)."""
    if grant is None:
        return
    if model is not None and not grant.allows_model(model):
        raise GatewayError(
            403, f"key '{grant.name}' may not use model '{model}'", "permission_error", "model_not_allowed"
        )
    if not grant.allows_run(run_id):
        raise GatewayError(
            403, f"key '{grant.name}' may not write run '{run_id}'", "permission_error", "run_not_allowed"
        )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer``, ``api-key`` or ``x-api-key``."""
    authorization = headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("api-key") or headers.get("x-api-key") or None
