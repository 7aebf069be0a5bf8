"""The pool's metrics on /metrics, per upstream: requests by outcome, failures by kind, latency,
state and load. Read at scrape time where they are states (up, outstanding)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tandem_upstream_requests_total",
            "Generations sent to each upstream, by outcome (ok, cancelled, failed, refused, failed_after_output).",
            ["upstream", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "tandem_upstream_failures_total",
            "Upstream failures by kind (connect, timeout, status, protocol, stream_error, transport, health).",
            ["upstream", "kind"],
            registry=registry,
        )
        self.retries = Counter(
            "tandem_upstream_retries_total",
            "Generations retried on another upstream after one failed before its first token.",
            registry=registry,
        )
        self.saturated = Counter(
            "tandem_upstream_saturated_total", "Requests answered 'retry after' because every upstream was full.", registry=registry
        )
        self.first_token = Histogram(
            "tandem_upstream_first_token_seconds", "Time from sending to an upstream to its first text.", ["upstream"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "tandem_upstream_request_seconds",
            "Time a generation held an upstream.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.up = Gauge("tandem_upstream_up", "1 while an upstream is in the rotation, 0 while it is out.", ["upstream"], registry=registry)
        self.outstanding = Gauge("tandem_upstream_outstanding", "Generations in flight on each upstream.", ["upstream"], registry=registry)
        self.waiting = Gauge("tandem_upstream_waiting", "Generations waiting for a free upstream slot.", registry=registry)

    def watch(self, upstream: str, up: Callable[[], bool], outstanding: Callable[[], int], waiting: Callable[[], int]) -> None:
        self.up.labels(upstream).set_function(lambda: float(up()))
        self.outstanding.labels(upstream).set_function(lambda: float(outstanding()))
        self.waiting.set_function(lambda: float(waiting()))
