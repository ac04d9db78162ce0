"""Prometheus metrics, derived from exactly the records the gateway writes (``GET /metrics``).

:meth:`Metrics.observe` is called once per record, right after the record is
on its way to disk, so every counter here equals a count over the run
records (summed over runs). Scheduler state (queue depth, in-flight, the
adaptive concurrency limit, rate-limit budget left) is read from each
upstream's scheduler at scrape time. Each app has its own registry, so
several gateways in one process never share counters.

Observing costs a few plain additions: the numbers live in per-label-set
lists updated on the event loop (no locks; scrapes run on the same loop) and
are turned into Prometheus families only when scraped.

Labels stay low-cardinality: ``model``, ``provider``, ``served``
(miss|hit|coalesced|batched), ``status_class`` (2xx|4xx|5xx) and, for
failures, the error ``code`` (a closed set). Names mirror LiteLLM's proxy and
vLLM where a counterpart exists, with a ``replaygate_`` prefix, so existing
dashboards carry over by renaming the prefix (counters gain ``_total`` when
exposed, as theirs do):

==========================================  ==============================================
replaygate_requests_metric                  litellm_requests_metric
replaygate_cache_hits_metric                litellm_cache_hits_metric
replaygate_cache_misses_metric              litellm_cache_misses_metric
replaygate_cache_coalesced_metric           (none: requests that shared another's call)
replaygate_batched_requests_metric          (none: requests sent in a micro-batch)
replaygate_input_tokens_metric              litellm_input_tokens_metric
replaygate_output_tokens_metric             litellm_output_tokens_metric
replaygate_total_tokens_metric              litellm_total_tokens_metric
replaygate_spend_metric                     litellm_spend_metric (USD)
replaygate_cost_saved_metric                (none: USD a hit or coalesced answer saved)
replaygate_unpriced_requests_metric         (none: answers of a model with no known price)
replaygate_deployment_total_requests        litellm_deployment_total_requests (upstream attempts)
replaygate_retries_metric                   (none: attempts after the first)
replaygate_llm_api_failed_requests_metric   litellm_llm_api_failed_requests_metric (per attempt)
replaygate_proxy_failed_requests_metric     litellm_proxy_failed_requests_metric (per request)
replaygate_request_total_latency_metric     litellm_request_total_latency_metric (seconds)
replaygate_llm_api_latency_metric           litellm_llm_api_latency_metric (seconds)
replaygate_time_to_first_token_seconds      vllm:time_to_first_token_seconds,
                                            litellm_llm_api_time_to_first_token_metric
replaygate_num_requests_waiting             vllm:num_requests_waiting
replaygate_num_requests_running             vllm:num_requests_running, litellm_in_flight_requests
replaygate_concurrency_limit                (none: the AIMD limit in force)
replaygate_remaining_requests_metric        litellm_remaining_requests_metric
replaygate_remaining_tokens_metric          litellm_remaining_tokens_metric
==========================================  ==============================================

Every count comes from :class:`gateway.tally.Counts`, the fold ``gateway
report`` uses too, so the two agree on every record (the per-served counters
and tokens count completions; tokenizer calls appear in
``replaygate_requests_metric`` only).

Upstream attempts of a batched request are the shared batch call's, counted
once per request in the batch. The API latency histogram times answers that
went upstream from the gateway's point of view: queue wait and retries
included.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cache.record import PAID
from gateway.tally import Counts
from gateway.upstream import Upstream

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40)
SERVED_COUNTERS = {
    "hit": ("replaygate_cache_hits_metric", "Requests answered from the cache"),
    "miss": ("replaygate_cache_misses_metric", "Requests that called the upstream themselves"),
    "coalesced": ("replaygate_cache_coalesced_metric", "Requests that shared an identical in-flight call"),
    "batched": ("replaygate_batched_requests_metric", "Requests sent upstream in a micro-batch"),
    "batch": ("replaygate_batch_lane_requests_metric", "Requests answered through the batch lane"),
}


class _Histogram:
    """Bucket counts and a sum, as Prometheus wants them."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


@dataclass
class _Series:
    """Everything counted for one (model, provider, served, status) combination."""

    counts: Counts = field(default_factory=Counts)  # the fold the report shares (gateway.tally)
    latency: _Histogram = field(default_factory=lambda: _Histogram(LATENCY_BUCKETS))
    ttft: _Histogram = field(default_factory=lambda: _Histogram(TTFT_BUCKETS))


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.series: dict[tuple[str, str, str, int], _Series] = {}
        self.upstreams: Mapping[str, Upstream] = {}
        self.registry.register(_RecordCollector(self))
        self.registry.register(_SchedulerCollector(self))

    def watch(self, upstreams: Mapping[str, Upstream]) -> None:
        """Report these upstreams' scheduler state at every scrape."""
        self.upstreams = upstreams

    def observe(self, record: Mapping[str, Any]) -> None:
        """Count one written record: a handful of additions, no locks, no label lookups."""
        key = (record["model"], record["provider"], record["served"], record["status"])
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        series.counts.add(record)
        series.latency.observe(record["latency_ms"] / 1000)
        ttft = record.get("ttft_ms")
        if ttft is not None:
            series.ttft.observe(ttft / 1000)

    @property
    def totals(self) -> Counts:
        """The counts over every observed record (for the status line: summed at read time)."""
        total = Counts()
        for series in list(self.series.values()):
            total.merge(series.counts)
        return total

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


class _RecordCollector(Collector):
    """Counters and histograms over the observed records, built at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        mp = ["model", "provider"]
        requests = CounterMetricFamily(
            "replaygate_requests_metric",
            "Requests answered, by model, provider, how served and status class",
            labels=[*mp, "served", "status_class"],
        )
        served = {s: CounterMetricFamily(name, doc, labels=mp) for s, (name, doc) in SERVED_COUNTERS.items()}
        tok = [*mp, "served"]
        tokens_in = CounterMetricFamily(
            "replaygate_input_tokens_metric", "Prompt tokens of answers", labels=tok
        )
        tokens_out = CounterMetricFamily(
            "replaygate_output_tokens_metric", "Completion tokens of answers", labels=tok
        )
        tokens_total = CounterMetricFamily(
            "replaygate_total_tokens_metric", "Prompt + completion tokens of answers", labels=tok
        )
        spend = CounterMetricFamily("replaygate_spend_metric", "USD paid upstream", labels=mp)
        saved = CounterMetricFamily(
            "replaygate_cost_saved_metric", "USD the cache and coalescing saved", labels=mp
        )
        unpriced = CounterMetricFamily(
            "replaygate_unpriced_requests_metric",
            "Answers whose cost or saving is unknown: the model has no price",
            labels=mp,
        )
        attempts = CounterMetricFamily(
            "replaygate_deployment_total_requests",
            "Upstream calls made (attempts, retries included)",
            labels=mp,
        )
        retries = CounterMetricFamily(
            "replaygate_retries_metric", "Upstream attempts after the first", labels=mp
        )
        failed = CounterMetricFamily(
            "replaygate_llm_api_failed_requests_metric",
            "Failed upstream attempts, by cause",
            labels=[*mp, "code"],
        )
        errors = CounterMetricFamily(
            "replaygate_proxy_failed_requests_metric",
            "Requests answered with an error, by cause",
            labels=[*mp, "code", "status_class"],
        )
        latency = HistogramMetricFamily(
            "replaygate_request_total_latency_metric",
            "Seconds from request to recorded answer, by how it was served",
            labels=tok,
        )
        api_latency = HistogramMetricFamily(
            "replaygate_llm_api_latency_metric",
            "Seconds for answers fetched upstream (queue wait and retries included)",
            labels=mp,
        )
        ttft = HistogramMetricFamily(
            "replaygate_time_to_first_token_seconds",
            "Seconds to the first upstream event of a streamed answer",
            labels=mp,
        )
        by_model: dict[tuple[str, str], Counts] = {}
        by_served: dict[tuple[str, str, str], Counts] = {}
        api: dict[tuple[str, str], list[_Histogram]] = {}
        streamed: dict[tuple[str, str], list[_Histogram]] = {}
        by_latency: dict[tuple[str, str, str], list[_Histogram]] = {}
        errors_by: dict[tuple[str, str, str, str], int] = {}
        for (model, provider, how, status), s in list(self.metrics.series.items()):
            requests.add_metric([model, provider, how, _status_class(status)], s.counts.requests)
            pair = (model, provider)
            by_model.setdefault(pair, Counts()).merge(s.counts)
            by_served.setdefault((model, provider, how), Counts()).merge(s.counts)
            by_latency.setdefault((model, provider, how), []).append(s.latency)
            if how in PAID and status == 200:
                api.setdefault(pair, []).append(s.latency)
            if s.ttft.counts != [0] * len(s.ttft.counts):
                streamed.setdefault(pair, []).append(s.ttft)
            for code, n in s.counts.errors.items():
                k = (model, provider, code, _status_class(status))
                errors_by[k] = errors_by.get(k, 0) + n
        for (model, provider, how), c in by_served.items():
            tokens_in.add_metric([model, provider, how], c.tokens_in)
            tokens_out.add_metric([model, provider, how], c.tokens_out)
            tokens_total.add_metric([model, provider, how], c.tokens_in + c.tokens_out)
        for (model, provider), c in by_model.items():
            for how, family in served.items():
                family.add_metric([model, provider], c.served.get(how, 0))
            spend.add_metric([model, provider], c.cost_usd)
            saved.add_metric([model, provider], c.cost_saved_usd)
            unpriced.add_metric([model, provider], c.unpriced)
            attempts.add_metric([model, provider], c.attempts)
            retries.add_metric([model, provider], c.retries)
            for code, n in c.failed_attempts.items():
                failed.add_metric([model, provider, code], n)
        for served_labels, histograms in by_latency.items():
            merged = _merge(histograms)
            latency.add_metric(list(served_labels), merged.buckets(), merged.total)
        for pair, histograms in api.items():
            merged = _merge(histograms)
            api_latency.add_metric(list(pair), merged.buckets(), merged.total)
        for pair, histograms in streamed.items():
            merged = _merge(histograms)
            ttft.add_metric(list(pair), merged.buckets(), merged.total)
        for error_labels, n in errors_by.items():
            errors.add_metric(list(error_labels), n)
        yield requests
        yield from served.values()
        yield from (tokens_in, tokens_out, tokens_total, spend, saved, unpriced)
        yield from (attempts, retries, failed, errors)
        yield from (latency, api_latency, ttft)


def _merge(histograms: list[_Histogram]) -> _Histogram:
    merged = _Histogram(histograms[0].bounds)
    for h in histograms:
        merged.counts = [a + b for a, b in zip(merged.counts, h.counts, strict=True)]
        merged.total += h.total
    return merged


class _SchedulerCollector(Collector):
    """Gauges read from each upstream's scheduler when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "replaygate_num_requests_waiting", "Requests queued for upstream capacity", labels=["model"]
        )
        running = GaugeMetricFamily(
            "replaygate_num_requests_running", "Upstream calls in flight", labels=["model"]
        )
        limit = GaugeMetricFamily(
            "replaygate_concurrency_limit", "Concurrent upstream calls allowed now (AIMD)", labels=["model"]
        )
        requests_left = GaugeMetricFamily(
            "replaygate_remaining_requests_metric", "Requests left in the RPM budget", labels=["model"]
        )
        tokens_left = GaugeMetricFamily(
            "replaygate_remaining_tokens_metric",
            "Tokens left in the TPM budget, by kind (total|input|output)",
            labels=["model", "kind"],
        )
        for name, upstream in self.metrics.upstreams.items():
            scheduler = upstream.scheduler
            waiting.add_metric([name], scheduler.queue_depth)
            running.add_metric([name], scheduler.in_flight)
            limit.add_metric([name], int(scheduler.concurrency_limit))
            if scheduler.requests is not None:
                scheduler.requests.wait_for(0.0)  # refills the bucket up to now
                requests_left.add_metric([name], max(0.0, scheduler.requests.level))
            for kind, bucket in (
                ("total", scheduler.tokens),
                ("input", scheduler.input_tokens),
                ("output", scheduler.output_tokens),
            ):
                if bucket is not None:
                    bucket.wait_for(0.0)
                    tokens_left.add_metric([name, kind], max(0.0, bucket.level))
        yield from (waiting, running, limit, requests_left, tokens_left)
