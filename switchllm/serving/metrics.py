"""Prometheus metrics for the server (GET /metrics), each server with its own registry.

Under `serve --workers N` the parent sets PROMETHEUS_MULTIPROC_DIR (a private temporary
directory) before any worker starts: prometheus_client then keeps every value in a per-process
file there, and `render` sums the files of all workers, so /metrics answered by any worker shows
the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from switchllm.serving.decision_log import LogStatus

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory prometheus_client shares values through, or None in a single process."""
    return os.environ.get(MULTIPROC_ENV) or None


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._shared_dir = multiprocess_dir()
        r = self.registry
        self.requests = Counter(
            "switchllm_requests", "Chat completion requests", ["router", "model", "status"],
            registry=r,
        )
        self.routing_seconds = Histogram(
            "switchllm_routing_seconds", "Time to decide the model (incl. batching)", ["router"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.upstream_seconds = Histogram(
            "switchllm_upstream_seconds",
            "Upstream time (non-streaming: whole response; streaming: to first token)",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "switchllm_tokens", "Tokens by model and kind", ["model", "kind"], registry=r
        )
        self.cost = Counter(
            "switchllm_cost_dollars", "Estimated upstream cost in dollars", ["model"], registry=r
        )
        self.strong_cost = Counter(
            "switchllm_always_strong_cost_dollars",
            "Estimated cost had every request gone to the strong model", registry=r,
        )
        self.saving = Gauge(
            "switchllm_saving_dollars",
            "Estimated saving against sending everything to the strong model", registry=r,
            multiprocess_mode="sum",  # each worker's own saving; the server's is their sum
        )
        self.fallbacks = Counter(
            "switchllm_fallbacks", "Requests answered by the other model after a failure",
            ["from_model", "to_model"], registry=r,
        )
        self.group_choices = Counter(
            "switchllm_group_choices", "Route-group decisions by chosen model",
            ["group", "model"], registry=r,
        )
        self.predicted_quality = Histogram(
            "switchllm_group_predicted_quality", "Predicted quality of the chosen model",
            ["group"], buckets=tuple(i / 10 for i in range(1, 11)), registry=r,
        )
        self.group_saving = Gauge(
            "switchllm_group_saving_dollars",
            "Estimated saving against always using the group's best model", ["group"],
            registry=r, multiprocess_mode="sum",
        )
        self.retries = Counter(
            "switchllm_upstream_retries", "Upstream retries", ["model"], registry=r
        )
        # the decision log writer (updated when /metrics is read)
        self.log_buffered = Gauge(
            "switchllm_log_buffered_rows", "Decision-log rows in memory, not yet written",
            registry=r, multiprocess_mode="livesum",  # summed over the running workers
        )
        self.log_capacity = Gauge(
            "switchllm_log_buffer_capacity_rows",
            "Most decision-log rows held in memory while the store is away; more are dropped",
            registry=r, multiprocess_mode="livesum",
        )
        self.log_store_up = Gauge(
            "switchllm_log_store_up", "1 when the last decision-log write succeeded, else 0",
            registry=r, multiprocess_mode="livemin",  # 0 when any worker's writes fail
        )
        self.log_written = Counter(
            "switchllm_log_written_rows", "Decision-log rows written to the store", registry=r
        )
        self.log_dropped = Counter(
            "switchllm_log_dropped_rows",
            "Decision-log rows dropped (buffer full while the store was away)", registry=r,
        )
        self.log_write_failures = Counter(
            "switchllm_log_write_failures", "Failed decision-log write attempts", registry=r
        )
        self._log_seen = (0, 0, 0)  # written, dropped, failures already counted

    def observe_log(self, status: LogStatus) -> None:
        self.log_buffered.set(status.buffered)
        self.log_capacity.set(status.capacity)
        self.log_store_up.set(1 if status.store_up else 0)
        now = (status.written, status.dropped, status.write_failures)
        for counter, before, after in zip(
            (self.log_written, self.log_dropped, self.log_write_failures), self._log_seen, now,
            strict=True,
        ):
            if after > before:
                counter.inc(after - before)
        self._log_seen = now

    @property
    def shared(self) -> bool:
        """True under `serve --workers N`: every worker's metrics are summed at each scrape."""
        return self._shared_dir is not None

    def render(self) -> bytes:
        if self._shared_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        # A fresh registry per scrape: MultiProcessCollector reads every worker's files now.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._shared_dir)
        return generate_latest(registry)
