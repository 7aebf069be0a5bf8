"""Opening the backend a `BackendSpec` names: the in-process engine on a model loaded here, or a
pool of upstreams. The app opens the first ones at start-up and a hot swap opens the next."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from . import models
from .backends import Backend
from .backends.local import LocalBackend
from .backends.spec import BackendSpec
from .backends.upstream import UpstreamConfig, UpstreamPool
from .backends.upstream.metrics import PoolMetrics
from .engine import EngineConfig, EngineMetrics

log = logging.getLogger("tandem.server")
EngineFactory = Callable[[models.LoadedModel, EngineConfig, EngineMetrics], Any]


class BackendFactory:
    """`loader` and `engine_factory` stand in for loading and the engine (tests) for the spec that
    matches `hooks_for` only: a swap to another model loads it for real."""

    def __init__(
        self,
        engine: EngineConfig,
        upstream: UpstreamConfig,
        registry: CollectorRegistry,
        loader: Callable[[], models.LoadedModel] | None = None,
        engine_factory: EngineFactory | None = None,
        hooks_for: BackendSpec | None = None,
    ) -> None:
        self.engine, self.upstream, self.registry = engine, upstream, registry
        self.loader, self.engine_factory, self.hooks_for = loader, engine_factory, hooks_for
        self._pool_metrics: PoolMetrics | None = None  # one set for every pool this app opens (same names, per-upstream labels)

    async def open(self, spec: BackendSpec) -> Backend:
        if spec.upstreams:
            if self._pool_metrics is None:
                self._pool_metrics = PoolMetrics(self.registry)
            config = dataclasses.replace(self.upstream, urls=spec.upstreams)
            return await UpstreamPool.open(config, self.registry, self._pool_metrics)
        hooked = spec == self.hooks_for
        return await asyncio.to_thread(self._local, spec, self.loader if hooked else None, self.engine_factory if hooked else None)

    def _local(
        self, spec: BackendSpec, loader: Callable[[], models.LoadedModel] | None, engine_factory: EngineFactory | None
    ) -> LocalBackend:
        """The model loaded here and the in-process engine on it (in a thread: loading takes seconds)."""
        loaded = loader() if loader else models.load(spec.model, spec.quant)
        metrics = EngineMetrics()  # a registry per engine: during a swap two engines run side by side
        Gauge("tandem_model_memory_bytes", "Bytes of model weights in memory.", registry=metrics.registry).set(loaded.footprint_bytes)
        if engine_factory is not None:
            engine = engine_factory(loaded, self.engine, metrics)
        else:
            from .engine import Engine

            engine = Engine(loaded.model, loaded.tokenizer, self.engine, metrics).start()
        log.info("engine ready: %s, %s, %.1f MiB", loaded.name, loaded.quant, loaded.footprint_bytes / 2**20)
        return LocalBackend(loaded, engine, metrics.registry)
