"""The HTTP app: a Starlette application whose lifespan loads the model once and owns the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

# The app is where the parts are composed: the support chat mounts here, and nothing else in
# server/ imports dialog/ (dialog depends on the gateway, never the reverse).
from dialog import web as dialog_web
from dialog.service import DialogConfig, DialogService
from dialog.store import Site

from . import feedback, models, openai_api
from .audit import AuditConfig, AuditLog
from .audit import web as audit_web
from .auth import RequireApiKey
from .backends import Backend
from .backends.local import LocalBackend
from .backends.upstream import UpstreamConfig, UpstreamPool
from .engine import EngineConfig, EngineMetrics
from .errors import APIError, handle_api_error, handle_not_found, handle_unexpected
from .gateway import Gateway
from .logs import quiet_logs
from .state import AppState

# The 135M default model follows a plain system prompt best (a shop persona made it ramble);
# real sites set their own with `tandem sites add`.
DEMO_SITE = Site("demo", "Tandem demo shop", ("http://127.0.0.1:*", "http://localhost:*"), "You are a helpful assistant.")
log = logging.getLogger("tandem.server")


@dataclass(frozen=True)
class ServerConfig:
    model: str | None = None
    quant: str = "auto"
    api_key: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)  # the audit log: its folder, signing key, checkpoints, retention
    admin_token: str | None = None  # for /audit; default: generated into the audit folder's admin.token
    demo_site: bool = True  # create the `demo` site (loopback origins) for /widget/demo when missing
    dialog: DialogConfig = field(default_factory=DialogConfig)  # the support chat: its folder, limits and answer length
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)  # with URLs: generate through them instead of a local model


def admin_token(config: ServerConfig) -> str:
    """The review page's token: the configured one, or one generated once and kept (mode 600)
    beside the audit log, so an operator can read it with `cat` and nobody else can."""
    if config.admin_token:
        return config.admin_token
    path = config.audit.home / "admin.token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        log.info("audit review token written to %s", path)
    return path.read_text().strip()


async def healthz(request: Request) -> Response:
    state: AppState = request.state.tandem
    alive, audit_stuck = state.gateway.engine_alive, state.gateway.audit_stuck
    running, waiting = state.gateway.engine_load
    status = "ok" if alive and not audit_stuck else ("engine stopped" if not alive else "audit writer stuck")
    if not alive and state.gateway.model.backend == "upstream":
        status = "no upstream answering"
    body: dict[str, Any] = {
        "status": status,
        "model": state.gateway.model.name,
        "backend": state.gateway.model.backend,
        "running": running,
        "waiting": waiting,
        "audit_queue": state.gateway.audit_depth,
    }
    if state.upstreams is not None:
        body["upstreams"] = state.upstreams.status()
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


async def metrics(request: Request) -> Response:
    state: AppState = request.state.tandem
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


def routes(api_key: str | None) -> list[BaseRoute]:
    """Every route, each mount with the credential it requires (`server/auth.py` lists them)."""
    keyed = [Middleware(RequireApiKey, api_key=api_key)]
    return [
        Route("/healthz", healthz),  # open: load balancers probe it
        Route("/metrics", metrics, middleware=keyed),
        *dialog_web.routes(api_key, DEMO_SITE.site_key),  # before the /v1 mount, which would take /v1/dialog
        Mount("/v1", routes=[*openai_api.routes, *feedback.routes], middleware=keyed),
        *audit_web.routes,
    ]


EngineFactory = Callable[[models.LoadedModel, EngineConfig, EngineMetrics], Any]


def create_app(
    config: ServerConfig, loader: Callable[[], models.LoadedModel] | None = None, engine_factory: EngineFactory | None = None
) -> Starlette:
    """`loader` replaces model loading (tests hand in a tiny model); by default `config.model`.
    `engine_factory` replaces the engine (protocol tests script its output). With upstream URLs
    in `config.upstream`, no model is loaded: the gateway generates through the pool."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        quiet_logs()  # after uvicorn has configured its loggers
        backend: Backend
        pool: UpstreamPool | None = None
        if config.upstream.urls:
            registry = CollectorRegistry()
            backend = pool = await UpstreamPool.open(config.upstream, registry)
        else:
            engine_metrics = EngineMetrics()
            registry = engine_metrics.registry
            backend = await asyncio.to_thread(_local_backend, config, loader, engine_factory, engine_metrics)
        audit = AuditLog(config.audit, registry).start()
        gateway = Gateway(backend, audit, registry)
        info = backend.info
        log.info("ready: %s (%s, %s backend); audit log %s", info.name, info.quant, info.backend, audit.path)
        dialog = await DialogService.open(gateway, config.dialog)
        if config.demo_site and await dialog.store.site(DEMO_SITE.site_key) is None:
            await dialog.store.put_site(DEMO_SITE)
        try:
            yield {
                "tandem": AppState(gateway, registry, int(time.time()), feedback.feedback_counter(registry), pool),
                "audit_review": audit_web.ReviewState(audit.config.home, admin_token(config)),
                "dialog": dialog,
            }
        finally:
            await dialog.close()
            await gateway.close()

    return Starlette(
        routes=routes(config.api_key),
        exception_handlers={APIError: handle_api_error, HTTPException: handle_not_found, Exception: handle_unexpected},
        lifespan=lifespan,
    )


def _local_backend(
    config: ServerConfig, loader: Callable[[], models.LoadedModel] | None, engine_factory: EngineFactory | None, metrics: EngineMetrics
) -> LocalBackend:
    """The model loaded here and the in-process engine on it (in a thread: loading takes seconds)."""
    loaded = loader() if loader else models.load(config.model, config.quant)
    Gauge("tandem_model_memory_bytes", "Bytes of model weights in memory.", registry=metrics.registry).set(loaded.footprint_bytes)
    if engine_factory is not None:
        engine = engine_factory(loaded, config.engine, metrics)
    else:
        from .engine import Engine

        engine = Engine(loaded.model, loaded.tokenizer, config.engine, metrics).start()
    log.info("engine ready: %s, %s, %.1f MiB", loaded.name, loaded.quant, loaded.footprint_bytes / 2**20)
    return LocalBackend(loaded, engine)


__all__ = ["ServerConfig", "create_app"]
