"""The HTTP app: a Starlette application whose lifespan loads the model once and owns the engine."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
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

from . import admin, feedback, models, openai_api, responses_api, tokenizer_api
from .audit import AuditConfig, AuditLog
from .audit import web as audit_web
from .auth import RequireApiKey
from .backend_factory import BackendFactory, EngineFactory
from .backends import Backend
from .backends.spec import BackendSpec
from .backends.upstream import UpstreamConfig
from .engine import EngineConfig
from .errors import APIError, handle_api_error, handle_not_found, handle_unexpected
from .gateway import Gateway
from .logs import quiet_logs
from .routing import Routing
from .serving import Drain
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
    completion_upstreams: tuple[str, ...] = ()  # upstreams for the IDE's completions only (`--upstream completion=URL`)
    chat_upstreams: tuple[
        str, ...
    ] = ()  # upstreams for the chat only (`--upstream chat=URL`); a surface with none uses the above, else the model here


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
    draining_replica = request.app.state.drain.draining
    served = state.gateway.models()
    if not alive and any(m.backend == "upstream" for m, _ in served):
        status = "no upstream answering"
    if draining_replica:
        status = "draining"  # (SIGTERM: the balancer stops sending new visitors; what runs finishes)
    body: dict[str, Any] = {
        "status": status,
        "state": "draining" if draining_replica else "ready",
        "model": served[0][0].name,
        "models": [{"id": m.name, "backend": m.backend, "surfaces": surfaces} for m, surfaces in served],
        "running": running,
        "waiting": waiting,
        "audit_queue": state.gateway.audit_depth,
    }
    live = request.state.dialog.live
    if live is not None:  # (a replica goes on serving its own sockets without Redis: said, not failed)
        body["redis"] = "up" if await live.check() else "down"
    if upstreams := state.gateway.upstreams():
        body["upstreams"] = upstreams
    if draining := state.gateway.draining():
        body["draining"] = [{"model": d.model, "calls": d.calls} for d in draining]
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


async def metrics(request: Request) -> Response:
    state: AppState = request.state.tandem
    # the app's own metrics (gateway, guard, audit, upstreams), then each local engine's (its own registry, so two can run during a swap)
    text = generate_latest(state.registry) + b"".join(generate_latest(r) for r in state.gateway.registries())
    return Response(text, media_type=CONTENT_TYPE_LATEST)


def routes(api_key: str | None) -> list[BaseRoute]:
    """Every route, each mount with the credential it requires (`server/auth.py` lists them)."""
    keyed = [Middleware(RequireApiKey, api_key=api_key)]
    return [
        Route("/healthz", healthz),  # open: load balancers probe it
        Route("/metrics", metrics, middleware=keyed),
        *dialog_web.routes(api_key, DEMO_SITE.site_key),  # before the /v1 mount, which would take /v1/dialog
        Mount("/v1", routes=[*openai_api.routes, *responses_api.routes, *feedback.routes], middleware=keyed),
        *(Route(r.path, r.endpoint, methods=list(r.methods or ()), middleware=keyed) for r in tokenizer_api.routes),
        *audit_web.routes,
        Mount("/admin", routes=admin.routes, middleware=[Middleware(audit_web.RequireAdmin)]),
    ]


def surface_specs(config: ServerConfig) -> dict[str, BackendSpec]:
    """Which backend serves which surface: upstreams named for a surface (`--upstream chat=URL`),
    else the ones named for both, else the model here."""
    local = BackendSpec(model=config.model, quant=config.quant)
    both = config.upstream.urls
    named = {"ide_completion": config.completion_upstreams or both, "support_chat": config.chat_upstreams or both}
    return {surface: BackendSpec(upstreams=urls) if urls else local for surface, urls in named.items()}


def create_app(
    config: ServerConfig, loader: Callable[[], models.LoadedModel] | None = None, engine_factory: EngineFactory | None = None
) -> Starlette:
    """`loader` replaces model loading (tests hand in a tiny model); by default `config.model`.
    `engine_factory` replaces the engine (protocol tests script its output). With upstream URLs
    in `config.upstream` (or per surface), the gateway generates through a pool of them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        quiet_logs()  # after uvicorn has configured its loggers
        registry = CollectorRegistry()
        specs = surface_specs(config)
        local = BackendSpec(model=config.model, quant=config.quant)
        factory = BackendFactory(config.engine, config.upstream, registry, loader, engine_factory, hooks_for=local)
        opened: dict[BackendSpec, Backend] = {}
        for spec in specs.values():
            if spec not in opened:
                opened[spec] = await factory.open(spec)
        gateway = Gateway(Routing({s: opened[spec] for s, spec in specs.items()}), AuditLog(config.audit, registry).start(), registry)
        for info, surfaces in gateway.models():
            log.info("serving %s with %s (%s, %s backend)", " and ".join(surfaces), info.name, info.quant, info.backend)
        dialog = await DialogService.open(gateway, config.dialog, registry)
        drain.watch(lambda: dialog.busy or sum(gateway.engine_load) > 0, dialog.begin_drain)
        if config.demo_site and await dialog.store.site(DEMO_SITE.site_key) is None:
            await dialog.store.put_site(DEMO_SITE)
        review = audit_web.ReviewState(gateway.audit.config.home, admin_token(config), gateway.audit.config.database_url)
        try:
            yield {
                "tandem": AppState(gateway, registry, int(time.time()), feedback.feedback_counter(registry), factory.open),
                "audit_review": review,
                "dialog": dialog,
            }
        finally:
            review.close()
            await dialog.close()
            await gateway.close()

    drain = Drain()
    app = Starlette(
        routes=routes(config.api_key),
        exception_handlers={APIError: handle_api_error, HTTPException: handle_not_found, Exception: handle_unexpected},
        lifespan=lifespan,
    )
    app.state.drain = drain  # (serving.py's server starts it at SIGTERM; /healthz reports it)
    return app


__all__ = ["ServerConfig", "create_app"]
