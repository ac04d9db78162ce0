"""Gateway configuration: read once from YAML at the edge, passed around as typed objects.

``${VAR}`` and ``${VAR:-default}`` in any string are replaced from the
environment when the file is read, so a config can name paths and ports
without hard-coding them. Secrets are never in the file: a model names the
environment variable that holds its key (``api_key_env``).
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cache.keys import deployment_namespace
from cache.runs import RUN_ID_PATTERN
from gateway.redaction import MIN_SECRET_LENGTH
from gateway.scheduler import Limits

# The engine arguments that decide which weights an in-process vLLM answers with.
CHECKPOINT_ARGS = ("model", "revision", "tokenizer", "tokenizer_revision", "quantization", "dtype")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def replaygate_home() -> Path:
    """Where set-up keeps venvs, models and the default store."""
    return Path(os.environ.get("REPLAYGATE_HOME", Path.home() / ".cache" / "replaygate"))


class ConfigError(ValueError):
    """A config file that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LaunchConfig(_Strict):
    """A command the gateway starts before serving and stops when it stops."""

    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    ready_timeout_s: float = 600.0

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value


class RetryConfig(_Strict):
    """How often to try a request that failed in a way that may pass (429, 5xx, timeouts)."""

    attempts: int = Field(default=4, ge=1, le=20)
    initial_s: float = Field(default=0.5, ge=0)
    max_s: float = Field(default=30.0, ge=0)


class BatchingConfig(_Strict):
    """Micro-batching of concurrent ``/v1/completions`` requests into one upstream call."""

    window_ms: float = Field(default=5.0, ge=0, le=1000)
    max_batch: int = Field(default=32, ge=1, le=1024)


class CostConfig(_Strict):
    """A model's price in USD per million tokens; ``cost: 0`` (or both zero) for a local model."""

    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)
    # What an answer through the batch lane costs, as a share of the online price.
    batch_price_factor: float = Field(default=0.5, ge=0, le=1)


class BatchConfig(_Strict):
    """How the batch lane (``/v1/batches``) sends a model's misses.

    ``engine: upstream`` submits them to the provider's own OpenAI-compatible
    ``/v1/files`` + ``/v1/batches``, split to respect its limits per file;
    ``engine: local`` runs them through the gateway's own pipeline, a few at a
    time, for servers without a batch API (vLLM's). Unset, a local upstream
    gets the local engine and a remote one the upstream's batch API.
    """

    engine: Literal["upstream", "local"] | None = None
    max_lines: int = Field(default=50_000, ge=1)  # OpenAI: 50,000 requests per batch
    max_bytes: int = Field(default=190 * 1024 * 1024, ge=1024)  # OpenAI: 200 MB per input file
    poll_interval_s: float = Field(default=30.0, gt=0)
    local_concurrency: int = Field(default=2, ge=1)


class ModelConfig(_Strict):
    """One model as clients name it, and the upstream that answers for it."""

    name: str
    provider: str = "openai-compatible"  # a name in the provider registry (gateway.providers)
    api_base: str | None = None
    upstream_model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 600.0
    launch: LaunchConfig | None = None
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    input_tpm: float | None = Field(default=None, gt=0)
    output_tpm: float | None = Field(default=None, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    max_queue: int = Field(default=1024, ge=0)
    retries: RetryConfig = RetryConfig()
    batching: BatchingConfig | None = None
    engine_args: dict[str, Any] = Field(default_factory=dict)
    cost: CostConfig | None = None  # None: litellm's price map, or free when the upstream is local
    # Deployments sharing a namespace share cache entries; unset, each deployment has its own.
    cache_namespace: str | None = Field(default=None, min_length=1, max_length=200)
    batch: BatchConfig = BatchConfig()

    @field_validator("cost", mode="before")
    @classmethod
    def _free(cls, value: Any) -> Any:
        return CostConfig() if value == 0 else value

    @field_validator("provider")
    @classmethod
    def _registered(cls, value: str) -> str:
        from gateway.providers import provider_names  # the registry imports this module's types

        if value not in provider_names():
            raise ValueError(f"unknown provider {value!r}; registered: {', '.join(provider_names())}")
        return value

    @model_validator(mode="after")
    def _needs_api_base(self) -> ModelConfig:
        if self.provider == "openai-compatible" and not self.api_base:
            raise ValueError("api_base is required for provider openai-compatible")
        if self.launch and not self.api_base:
            raise ValueError("a launched upstream needs the api_base it will serve on")
        key = self.api_key()
        if key and len(key) < MIN_SECRET_LENGTH:  # masking it would mask ordinary words too
            raise ValueError(
                f"the provider key in ${self.api_key_env} is {len(key)} characters long; "
                f"keys under {MIN_SECRET_LENGTH} characters are refused, as the gateway could not "
                "mask them in what it writes without masking ordinary text"
            )
        return self

    def limits(self) -> Limits:
        """The scheduler's view of this model's limits."""
        return Limits(
            rpm=self.rpm,
            tpm=self.tpm,
            input_tpm=self.input_tpm,
            output_tpm=self.output_tpm,
            max_concurrency=self.max_concurrency,
            max_queue=self.max_queue,
        )

    @property
    def target_model(self) -> str:
        """The model name sent upstream."""
        return self.upstream_model or self.name

    @cached_property
    def key_namespace(self) -> str:
        """What cache keys name this model by: ``cache_namespace``, else its deployment's identity."""
        if self.cache_namespace:
            return self.cache_namespace
        checkpoint = {k: self.engine_args.get(k) for k in CHECKPOINT_ARGS if k in self.engine_args}
        return deployment_namespace(self.provider, self.api_base, self.target_model, checkpoint or None)

    @property
    def capabilities(self) -> Any:
        """The registered provider class: what it serves, whether it is local, how its tokens count."""
        from gateway.providers import provider_class

        return provider_class(self.provider)

    def api_key(self) -> str | None:
        """The provider key, read from the environment at call time, never stored."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class RecordsConfig(_Strict):
    """How run records reach the disk (see ``cache.records``)."""

    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_s: float = 1.0


class StateConfig(_Strict):
    """Where the state that must be one value for every gateway process lives (``gateway.state``).

    ``local`` (the default): in this process, as one gateway always was; nothing
    imports a Redis client. ``redis``: the response index, single-flight leases,
    rate-limit buckets and sample counters are shared through the Redis at
    ``url`` by every process configured with the same ``url`` and ``prefix``.
    """

    backend: Literal["local", "redis"] = "local"
    url: str | None = None
    prefix: str = Field(default="rg:", min_length=1, max_length=64)
    # How many processes share the limits: each takes this share of them while Redis is out of
    # reach (or, with the local backend, under ``serve --workers``), so together they stay within.
    replicas: int = Field(default=1, ge=1, le=1024)
    timeout_s: float = Field(default=1.0, gt=0, le=10)  # a Redis slower than this counts as down
    lease_s: float = Field(default=10.0, gt=0, le=600)  # a dead holder's single-flight lease expires
    wait_s: float = Field(default=600.0, gt=0)  # the longest a process waits for another's answer
    # A waiter is woken by the holder's announcement (Redis pub/sub); it looks again at least this often
    # anyway, so a lost announcement or a dead holder's expired lease still ends its wait.
    wait_recheck_s: float = Field(default=1.0, gt=0, le=600)
    # A Redis the gateway starts itself (e.g. ``command: redis-server --port 6390 --save ""``) and
    # stops with itself, as a model's ``launch``; under ``serve --workers`` the parent starts it once.
    launch: LaunchConfig | None = None

    @model_validator(mode="after")
    def _needs_url(self) -> StateConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("state.backend redis needs a url (redis://host:port/db)")
        if self.launch is not None and self.backend != "redis":
            raise ValueError("state.launch starts a Redis: it needs backend redis and its url")
        return self


class KeyConfig(_Strict):
    """A gateway key, stored as its sha256 digest, and what it may do."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: list[str] = Field(default_factory=lambda: ["*"])
    runs: list[str] = Field(
        default_factory=lambda: ["*"],
        description="allowed run-ids; an entry ending in -, _, . or * is a prefix; * allows all",
    )

    @field_validator("runs")
    @classmethod
    def _run_patterns(cls, runs: list[str]) -> list[str]:
        for pattern in runs:
            name = pattern.removesuffix("*")
            if pattern not in ("", "*") and not (RUN_ID_PATTERN.fullmatch(name) and "*" not in name):
                raise ValueError(
                    f"run grant {pattern!r} is neither a run-id nor a prefix: use a run-id (exact), "
                    "a prefix ending in '-', '_', '.' or '*' ('team-', 'team*'), or '*' for every run"
                )
        return runs


class GatewayConfig(_Strict):
    """Everything ``gateway serve`` needs."""

    host: str = "127.0.0.1"
    port: int = 8000
    cache_dir: Path = Field(default_factory=lambda: replaygate_home() / "store")
    max_body_bytes: int = 16 * 1024 * 1024
    records: RecordsConfig = RecordsConfig()
    shutdown_timeout_s: float = Field(default=30.0, ge=0)
    keys: list[KeyConfig] = Field(default_factory=list)
    state: StateConfig = StateConfig()
    models: list[ModelConfig] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicated)}")
        return models

    def model(self, name: str) -> ModelConfig | None:
        """The configured model called ``name``."""
        return next((m for m in self.models if m.name == name), None)


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def parse_config(text: str, source: str, **overrides: Any) -> GatewayConfig:
    """Parse YAML ``text``; ``overrides`` (host, port, cache_dir) win over the file."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    data = _expand(data)
    data.setdefault("cache_dir", str(replaygate_home() / "store"))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'top level'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def load_config(path: Path | None = None, **overrides: Any) -> GatewayConfig:
    """Read ``path``, or the embedded default (a launched local vLLM) when None."""
    if path is None:
        os.environ.setdefault("REPLAYGATE_HOME", str(replaygate_home()))
        text = resources.files("gateway").joinpath("default_config.yaml").read_text()
        return parse_config(text, "embedded default config", **overrides)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_config(text, str(path), **overrides)
