"""A ``provider: litellm`` model's batch API through litellm's batch functions, in OpenAI's shapes.

``litellm.acreate_file`` uploads the lines, ``acreate_batch`` starts the
batch, ``aretrieve_batch``, ``acancel_batch`` and ``afile_content`` follow it,
``alist_batches`` finds a submit the journal missed. The provider is the one
litellm reads from ``upstream_model`` (``openai/gpt-4o-mini`` → ``openai``),
and each line names the model without that prefix, as the provider knows it.

Which providers: those where litellm (1.110) can *create* a batch from a key
and a base alone (:data:`CREATES_BATCHES`). Anthropic's Message Batches are
not among them: litellm reads an Anthropic batch and its results, but its
``transform_create_batch_request`` raises ``NotImplementedError``, so an
Anthropic model's batch lines go to the lane's local engine (online, at the
online price). Vertex AI and Bedrock need a storage bucket besides, which the
config has no field for yet.
"""

from __future__ import annotations

from typing import Any

from gateway.batches.upstream import BatchUpstreamError, matches
from gateway.config import ModelConfig
from gateway.providers.litellm import connection, import_litellm

CREATES_BATCHES = frozenset({"openai", "azure", "mistral", "xai", "litellm_proxy"})


def _dict(obj: Any) -> dict[str, Any]:
    data = obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)
    if not isinstance(data, dict):
        raise BatchUpstreamError(f"litellm returned {type(obj).__name__}, not an object")
    return data


class LiteLLMBatches:
    """The :class:`~gateway.batches.upstream.BatchClient` of one litellm model."""

    @classmethod
    def for_model(cls, model: ModelConfig) -> LiteLLMBatches | None:
        """The client for ``model``, or None when litellm cannot create batches at its provider."""
        litellm = import_litellm()
        try:
            bare, provider, _, _ = litellm.get_llm_provider(model=model.target_model, api_base=model.api_base)
        except Exception:  # litellm cannot place the model: it has no batch API we can reach
            return None
        return cls(model, provider, bare) if provider in CREATES_BATCHES else None

    def __init__(self, model: ModelConfig, provider: str, line_model: str) -> None:
        self.model = model
        self.provider = provider
        self.line_model = line_model
        self.litellm = import_litellm()

    async def _call(self, name: str, **kwargs: Any) -> Any:
        function = getattr(self.litellm, name)
        try:
            return await function(custom_llm_provider=self.provider, **connection(self.model), **kwargs)
        except Exception as exc:
            # litellm's failures are openai's, httpx's and pydantic's exceptions, and its own; each is
            # the provider's trouble to the lane, which tries again at the next poll.
            raise BatchUpstreamError(f"litellm.{name}: {type(exc).__name__}: {exc}") from exc

    async def upload(self, content: bytes, filename: str) -> str:
        """Upload a batch input file; its id."""
        uploaded = await self._call(
            "acreate_file", file=(filename, content, "application/jsonl"), purpose="batch"
        )
        return str(uploaded.id)

    async def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Start a batch over an uploaded file."""
        batch = await self._call(
            "acreate_batch",
            completion_window="24h",
            endpoint=endpoint,
            input_file_id=file_id,
            metadata=metadata,
        )
        return _dict(batch)

    async def find(self, metadata: dict[str, str]) -> dict[str, Any] | None:
        """The batch submitted with ``metadata``; None also where litellm cannot list batches."""
        from litellm.types.utils import LIST_BATCHES_SUPPORTED_PROVIDERS

        if self.provider not in LIST_BATCHES_SUPPORTED_PROVIDERS:
            return None
        after: str | None = None
        while True:
            page = _dict(await self._call("alist_batches", limit=100, after=after))
            batches = [_dict(b) for b in page.get("data") or []]
            for batch in batches:
                if matches(batch, metadata):
                    return batch
            if not page.get("has_more") or not batches:
                return None
            after = str(batches[-1]["id"])

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch as the provider sees it now."""
        return _dict(await self._call("aretrieve_batch", batch_id=batch_id))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the provider to stop the batch."""
        return _dict(await self._call("acancel_batch", batch_id=batch_id))

    async def content(self, file_id: str | None) -> bytes:
        """A file's bytes (none for no file)."""
        if not file_id:
            return b""
        return bytes((await self._call("afile_content", file_id=file_id)).content)
