"""The engine's accounting: Prometheus instruments (names follow vLLM's, with a `tandem_` prefix)
behind the few verbs the worker calls, and `read` for whoever wants a figure back (tests, the bench).

The registry is the one record of what the engine did: nothing else counts. Each engine gets
its own registry so that several engines (tests, benchmarks) never collide. prometheus_client
is thread-safe, so the worker thread records directly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("tandem_time_to_first_token_seconds", "Submission to first token.", buckets=_LATENCY, registry=r)
        self.itl = Histogram("tandem_inter_token_latency_seconds", "Time between two tokens of one request.", buckets=_LATENCY, registry=r)
        self.queue_time = Histogram(
            "tandem_request_queue_time_seconds", "Time spent waiting for a batch slot.", buckets=_LATENCY, registry=r
        )
        self.e2e = Histogram("tandem_e2e_request_latency_seconds", "Submission to last token.", buckets=_LATENCY, registry=r)
        # These three are read at scrape time, not set when the worker last passed by (a scrape
        # during a long prefill would see an idle engine).
        self.running = Gauge("tandem_requests_running", "Requests in the running batch.", registry=r)
        self.prefilling = Gauge("tandem_requests_prefilling", "Requests taken from the queue whose prompt is being computed.", registry=r)
        self.waiting = Gauge("tandem_requests_waiting", "Requests waiting for a batch slot.", registry=r)
        self.batch_size = Histogram("tandem_batch_size", "Rows in each decode step.", buckets=_BATCH, registry=r)
        self.peak_batch = Gauge("tandem_batch_size_peak", "Largest decode batch since start.", registry=r)
        self.generated = Counter("tandem_generation_tokens", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("tandem_prompt_tokens", "Prompt tokens received.", registry=r)
        self.prefill_tokens = Counter("tandem_prefill_tokens", "Prompt tokens computed (not served from the prefix cache).", registry=r)
        self.prefix_queries = Counter("tandem_prefix_cache_queries", "Prompts looked up in the prefix cache.", registry=r)
        self.prefix_hits = Counter("tandem_prefix_cache_hits", "Prompts that reused cached KV.", registry=r)
        self.prefix_tokens = Counter("tandem_prefix_cache_reused_tokens", "Prompt tokens served from the prefix cache.", registry=r)
        self.finishes = Counter("tandem_requests_finished", "Requests that ended, by reason.", ["reason"], registry=r)
        self.decode_step = Gauge("tandem_decode_step_info", "The decode step in use (1 for the current one).", ["step"], registry=r)
        self.spec_steps = Counter("tandem_speculative_steps", "Decode steps that verified prompt-lookup drafts.", registry=r)
        self.spec_drafted = Counter("tandem_speculative_drafted_tokens", "Draft tokens proposed for verification.", registry=r)
        self.spec_accepted = Counter(
            "tandem_speculative_accepted_tokens", "Draft tokens accepted (the model's own greedy choice).", registry=r
        )
        self.refused = Counter("tandem_requests_refused", "Requests refused because the queue was full.", registry=r)
        self._peak = 0  # (written by the worker only)

    # ----- the verbs the worker calls -------------------------------------------------------

    def admitted(self, queue_seconds: float, prompt_tokens: int) -> None:
        """A request left the queue for a prefill."""
        self.queue_time.observe(queue_seconds)
        self.prompt_tokens.inc(prompt_tokens)
        self.prefix_queries.inc()

    def prefilled(self, computed: int, reused: int = 0) -> None:
        """Prompt tokens computed; `reused` of them came from the prefix cache instead (a hit)."""
        self.prefill_tokens.inc(computed)
        if reused:
            self.prefix_hits.inc()
            self.prefix_tokens.inc(reused)

    def stepped(self, rows: int) -> None:
        """A decode step over `rows` rows (the histogram's count is the steps, its sum the row-steps)."""
        self.batch_size.observe(rows)
        if rows > self._peak:
            self._peak = rows
            self.peak_batch.set(rows)

    def speculated(self, drafted: int, accepted: int) -> None:
        """A decode step that verified `drafted` draft tokens, of which the model agreed with `accepted`."""
        self.spec_steps.inc()
        self.spec_drafted.inc(drafted)
        self.spec_accepted.inc(accepted)

    def token(self, since: float, first: bool) -> None:
        """A token generated, `since` seconds after the submission (first) or the previous token."""
        (self.ttft if first else self.itl).observe(since)
        self.generated.inc()

    def finished(self, reason: str, seconds: float) -> None:
        """A request ended ("stop", "length", "error", "cancelled"), `seconds` after its submission."""
        self.finishes.labels(reason).inc()
        self.e2e.observe(seconds)

    # ----- reading back ---------------------------------------------------------------------

    def read(self, name: str, **labels: str) -> float:
        """One sample's current value (0 where nothing was recorded yet), e.g.
        `read("tandem_requests_finished_total", reason="cancelled")`."""
        value = self.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value
