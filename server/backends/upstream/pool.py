"""A pool of OpenAI-compatible upstreams behind the gateway: the engine interface for a fleet.

Routing is least outstanding requests, with affinity: a request that names a conversation or a
document (`GenerationRequest.affinity`) goes to the upstream that rendezvous hashing gives it
among the healthy ones, so that upstream's prefix cache is reused, unless it is full (then the
least loaded takes it). Health checks run in the background; an upstream that fails a check or a
request leaves the rotation, is checked again after a backoff that doubles (capped), and comes
back when it answers. A generation that fails before any text went out is retried once on
another upstream; one that fails after ends with an explicit error (`BackendFailed` with
`after_output`), never a silent cut and never a second answer. Closing the stream closes the
upstream's connection, which frees its slot there. This is the pattern of llm-d's and Ray Serve's
prefix-aware routers, written small because it is a few dozen lines of policy over httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from ...engine.types import Delta, EngineOverloaded, GenerationRequest, InvalidRequest
from ..protocol import BackendFailed, BackendUnavailable, ModelInfo, PromptText
from .config import UpstreamConfig
from .counting import CountedText, UpstreamCounter
from .metrics import PoolMetrics
from .upstream import Upstream, UpstreamError

log = logging.getLogger("tandem.upstream")
DEFAULT_CONTEXT = 2048  # when neither the upstreams, the settings nor a tokenizer say


class UpstreamPool:
    def __init__(
        self, config: UpstreamConfig, metrics: PoolMetrics, text: PromptText | None = None, native_context: int | None = None
    ) -> None:
        if not config.urls:
            raise ValueError("a pool needs at least one upstream URL")
        self.config = config
        self.metrics = metrics
        slots = len(config.urls) * config.max_concurrency
        self.client = httpx.AsyncClient(
            trust_env=False,  # an operator's HTTP_PROXY is not a road to the upstreams they name
            limits=httpx.Limits(max_connections=slots + 2 * len(config.urls), max_keepalive_connections=slots),
        )
        self.upstreams = [Upstream(url, config, self.client) for url in config.urls]
        self.counter: UpstreamCounter | None = None
        if text is None:
            self.counter = UpstreamCounter(config.health_timeout, self.upstreams[0].headers)
            text = CountedText(self.counter.count, fim=lambda: any(u.discovered.fim for u in self.upstreams if u.discovered))
        self._text: PromptText = text
        self._native_context = native_context
        self._waiting = 0
        self._changed = asyncio.Condition()  # a slot freed or an upstream came back
        self._order = itertools.count()
        self._assigned: dict[str, int] = {}
        self._health: asyncio.Task[None] | None = None
        self._closed = False
        for up in self.upstreams:
            self.metrics.watch(up.url, lambda up=up: up.healthy, lambda up=up: up.outstanding, lambda: self._waiting)  # type: ignore[misc]

    @classmethod
    async def open(cls, config: UpstreamConfig, registry: CollectorRegistry, metrics: PoolMetrics | None = None) -> UpstreamPool:
        """Load the tokenizer if one is configured, check every upstream once, start the health loop.
        `metrics`: the app's pool metrics, when it has opened a pool before (they register once)."""
        text, native = (await asyncio.to_thread(load_tokenizer_text, config.tokenizer)) if config.tokenizer else (None, None)
        pool = cls(config, metrics or PoolMetrics(registry), text, native)
        await pool.check_all()
        if pool.counter is not None:
            await asyncio.to_thread(pool.counter.probe, [u.url for u in pool.upstreams if u.healthy])
        for up in pool.upstreams:
            state = f"up, serving {up.model!r}" if up.healthy else f"down ({up.last_error})"
            log.info("upstream %s: %s", up.url, state)
        pool._health = asyncio.create_task(pool._health_loop(), name="tandem-upstream-health")
        return pool

    # ----- the engine interface ------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        found = [u.discovered for u in self.upstreams if u.discovered is not None]
        reported = [d.context_length for d in found if d.context_length]
        native = min(reported) if reported else self._native_context or DEFAULT_CONTEXT
        fim = self._text.fim
        quants = {d.quant for d in found if d.quant}
        return ModelInfo(
            name=self.config.model or (found[0].model if found else "upstream"),
            quant=quants.pop() if len(quants) == 1 else "upstream",
            context_length=self.config.context_length or native,
            native_context_length=native,
            fim=fim,
            chat=self.text.chat_template,
            footprint_bytes=None,
            backend="upstream",
            token_count="tokenizer" if self.counter is None else self.counter.kind,
        )

    @property
    def text(self) -> PromptText:
        return self._text

    @property
    def alive(self) -> bool:
        return not self._closed and any(u.healthy for u in self.upstreams)

    @property
    def load(self) -> tuple[int, int]:
        return sum(u.outstanding for u in self.upstreams), self._waiting

    def status(self) -> list[dict[str, Any]]:
        """Each upstream as /healthz shows it."""
        return [
            {"url": u.url, "up": u.healthy, "model": u.model, "outstanding": u.outstanding, "error": u.last_error} for u in self.upstreams
        ]

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        if (field := unsupported(req)) is not None:
            raise InvalidRequest(
                f"{field} is not available when generating through upstream servers; only the in-process engine has it", field
            )
        tried: list[Upstream] = []
        while True:
            unfit = [] if req.suffix is None else [u for u in self.upstreams if not (u.discovered and u.discovered.fim)]
            up = await self._acquire(req.affinity, tried + unfit)  # a gap goes only where it can be filled
            sent, outcome, started = False, "failed", time.monotonic()
            try:
                async with contextlib.aclosing(up.generate(req)) as deltas:
                    async for delta in deltas:
                        if delta.text and not sent:
                            sent = True
                            self.metrics.first_token.labels(up.url).observe(time.monotonic() - started)
                        if delta.finish_reason is not None:
                            outcome = "ok"  # (the caller may close the stream at the last delta)
                        yield delta
                return
            except UpstreamError as exc:
                self.metrics.failures.labels(up.url, exc.kind).inc()
                if exc.kind != "status" or exc.retry_after is None:  # (an upstream that says "busy, retry" is not down)
                    up.mark_failed(str(exc))
                    log.warning("upstream %s failed: %s", up.url, exc)
                if sent:
                    outcome = "failed_after_output"
                    raise BackendFailed(
                        f"upstream {up.url} failed after the answer had started ({exc}); the answer is incomplete", True
                    ) from None
                if exc.retryable and not tried:
                    tried.append(up)
                    self.metrics.retries.inc()
                    continue  # before any text went out: once more, elsewhere
                raise BackendFailed(f"upstream {up.url} failed: {exc}") from None
            except BackendFailed:
                raise
            except (GeneratorExit, asyncio.CancelledError):
                outcome = "ok" if outcome == "ok" else "cancelled"
                raise
            except Exception:  # the upstream refused the request itself (InvalidRequest, ContextOverflow)
                outcome = "refused"
                raise
            finally:
                up.outstanding -= 1
                self.metrics.requests.labels(up.url, outcome).inc()
                self.metrics.duration.labels(up.url).observe(time.monotonic() - started)
                await self._notify()

    async def close(self) -> None:
        self._closed = True
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        await self._notify()
        for up in self.upstreams:
            up.healthy = False  # out of this pool's rotation for good (its gauges read 0 unless a new pool watches the URL)
        await self.client.aclose()
        if self.counter is not None:
            self.counter.close()

    # ----- routing ---------------------------------------------------------------------------

    def _choose(self, affinity: str | None, exclude: list[Upstream]) -> Upstream | None:
        ready = [u for u in self.upstreams if u.healthy and u not in exclude]
        free = [u for u in ready if u.outstanding < self.config.max_concurrency]
        if not free:
            return None
        if affinity:
            home = max(ready, key=lambda u: hashlib.blake2b(f"{affinity}\0{u.url}".encode(), digest_size=8).digest())
            if home in free:
                return home
        # least outstanding; among equals, the one given a request longest ago (so a trickle spreads too)
        return min(free, key=lambda u: (u.outstanding, self._assigned.get(u.url, -1)))

    async def _acquire(self, affinity: str | None, exclude: list[Upstream]) -> Upstream:
        """A slot on an upstream: at once, or after waiting for one (bounded: beyond `max_waiting`
        waiters, or after `read_timeout`, the caller is told to retry later)."""
        if self._closed:
            raise BackendUnavailable("the gateway is shutting down", retry_after=5)
        deadline = time.monotonic() + self.config.read_timeout
        queued = False
        try:
            while True:
                up = self._choose(affinity, exclude)
                if up is not None:
                    up.outstanding += 1
                    self._assigned[up.url] = next(self._order)
                    return up
                if not any(u.healthy for u in self.upstreams if u not in exclude):
                    raise self._unavailable()
                if not queued:
                    if self._waiting >= self.config.max_waiting:
                        self.metrics.saturated.inc()
                        raise EngineOverloaded(retry_after=self._retry_after())
                    self._waiting, queued = self._waiting + 1, True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.metrics.saturated.inc()
                    raise EngineOverloaded(retry_after=self._retry_after())
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
        finally:
            if queued:
                self._waiting -= 1

    def _unavailable(self) -> BackendUnavailable:
        reasons = "; ".join(f"{u.url}: {u.last_error or 'not checked yet'}" for u in self.upstreams)
        soonest = min((u.retry_at for u in self.upstreams), default=0.0) - time.monotonic()
        return BackendUnavailable(f"no upstream is answering ({reasons})", retry_after=max(1, round(soonest + self.config.health_interval)))

    def _retry_after(self) -> int:
        return max(1, round(self.config.health_interval))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ----- health ----------------------------------------------------------------------------

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(u) for u in self.upstreams))

    async def _check(self, up: Upstream) -> None:
        was, first = up.healthy, up.discovered is None and up.failures == 0
        if not await up.check() and was:
            self.metrics.failures.labels(up.url, "health").inc()
        if up.healthy != was and not first:
            log.warning("upstream %s is %s", up.url, "back in the rotation" if up.healthy else f"out of the rotation: {up.last_error}")
            if up.healthy and self.counter is not None and self.counter.style is None:
                await asyncio.to_thread(self.counter.probe, [up.url])
            await self._notify()

    async def _health_loop(self) -> None:
        """Check each healthy upstream every `health_interval`, and each failed one when its backoff ends."""
        last: dict[str, float] = {}
        tick = min(1.0, self.config.health_interval)
        while not self._closed:
            now = time.monotonic()
            due = [
                u
                for u in self.upstreams
                if (u.healthy and now - last.get(u.url, 0.0) >= self.config.health_interval) or (not u.healthy and now >= u.retry_at)
            ]
            for u in due:
                last[u.url] = now
            if due:
                await asyncio.gather(*(self._check(u) for u in due))
            await asyncio.sleep(tick)


def load_tokenizer_text(spec: str) -> tuple[PromptText, int | None]:
    """The tokenizer of a model installed here (as `--model` names it), offline, for exact counts."""
    import json
    import os

    from transformers import AutoTokenizer

    from ... import models
    from ..tokenizer_text import TokenizerText

    _, source, offline = models.resolve(spec)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = Path(source) / "config.json"
    native = json.loads(config.read_text()).get("max_position_embeddings") if config.is_file() else None
    return TokenizerText(tokenizer, models.fim_tokens(tokenizer), as_ids=False), native if isinstance(native, int) else None


def unsupported(req: GenerationRequest) -> str | None:
    """The first field of `req` a pool cannot honour: OpenAI's own sampling fields go to the
    upstream as they are, but what OpenAI-compatible servers do not all honour (vLLM's extras,
    logprobs, echo, several answers) would be dropped by some of them without a word."""
    c = req.controls
    checks = [
        ("repetition_penalty", c.repetition_penalty != 1.0),
        ("min_tokens", c.min_tokens > 0),
        ("stop_token_ids", bool(c.stop_token_ids)),
        ("logprobs", req.logprobs is not None),
        ("echo", req.echo),
        ("n", req.n != 1),
    ]
    if req.grammar is not None:
        checks.append((req.grammar.field, True))
    return next((name for name, used in checks if used), None)
