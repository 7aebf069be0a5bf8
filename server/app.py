"""The HTTP app: a Starlette application whose lifespan loads the model once and owns the engine."""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

# The app is where the parts are composed: the support chat mounts here, and nothing else in
# server/ imports dialog/ (dialog depends on the gateway, never the reverse).
from dialog import web as dialog_web
from dialog.service import DialogConfig, DialogService
from dialog.store import Site

from . import feedback, models, openai_api
from .audit import AuditConfig, AuditLog
from .audit import web as audit_web
from .engine import Engine, EngineConfig, EngineMetrics
from .errors import APIError, handle_api_error, handle_not_found, handle_unexpected
from .gateway import Gateway
from .logs import quiet_logs
from .settings import tandem_home
from .state import AppState

# The 135M default model follows a plain system prompt best (a shop persona made it ramble);
# real sites set their own with `tandem sites add`.
DEMO_SITE = Site("demo", "Tandem demo shop", ("http://127.0.0.1:*", "http://localhost:*"), "You are a helpful assistant.")
log = logging.getLogger("tandem.server")

OPEN_PATHS = ("/healthz",)  # answered without an API key, so load balancers can probe
# these check their own credentials: the review page its admin token; the support chat its site
# key, the page's origin and the visitor token (a widget on a customer's site has no API key)
OWN_AUTH_PREFIXES = ("/audit", "/v1/dialog", "/widget.js", "/widget")


@dataclass(frozen=True)
class ServerConfig:
    model: str | None = None
    quant: str = "auto"
    api_key: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    audit_dir: Path | None = None  # default: $TANDEM_HOME/audit
    audit_checkpoint_every: int = 256
    audit_content_days: int = 30
    audit_key: Path | None = None  # the signing key's path; default: <audit_dir>/signing.key
    audit_max_queue: int = 4096  # unwritten records past which new calls are refused (503 audit_unavailable)
    admin_token: str | None = None  # for /audit; default: generated into <audit_dir>/admin.token
    dialog_dir: Path | None = None  # chat store and visitor-token key; default: $TANDEM_HOME/dialog
    demo_site: bool = True  # create the `demo` site (loopback origins) for /widget/demo when missing
    dialog: dict[str, object] = field(default_factory=dict)  # DialogConfig overrides (limits, answer length)

    def dialog_config(self) -> DialogConfig:
        directory = self.dialog_dir or tandem_home() / "dialog"
        return DialogConfig(db_path=directory / "chat.db", key_path=directory / "visitor.key", **self.dialog)  # type: ignore[arg-type]

    def audit_config(self) -> AuditConfig:
        return AuditConfig(self.audit_dir or tandem_home() / "audit", self.audit_checkpoint_every, self.audit_content_days,
                           signing_key=self.audit_key, max_queue=self.audit_max_queue)


def admin_token(config: ServerConfig) -> str:
    """The review page's token: the configured one, or one generated once and kept (mode 600)
    beside the audit log, so an operator can read it with `cat` and nobody else can."""
    if config.admin_token:
        return config.admin_token
    path = config.audit_config().directory / "admin.token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        log.info("audit review token written to %s", path)
    return path.read_text().strip()


class BearerAuth:
    """Requires `Authorization: Bearer <api key>` on every route but the open ones."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        exempt = path in OPEN_PATHS or any(path == p or path.startswith(p + "/") for p in OWN_AUTH_PREFIXES)
        if self.api_key and scope["type"] == "websocket" and path == "/v1/dialog" and _site_key(scope) == DEMO_SITE.site_key:
            exempt = False  # the demo site trusts loopback origins, which any client can claim: with a key, it needs the key
        if self.api_key and scope["type"] in ("http", "websocket") and not exempt:
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                if scope["type"] == "http":
                    response = APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)", type="authentication_error", code="invalid_api_key").response()
                    await response(scope, receive, send)
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


def _site_key(scope: Scope) -> str:
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("site_key") or [""])[0]


async def healthz(request: Request) -> Response:
    state: AppState = request.state.tandem
    alive, audit_stuck = state.gateway.engine_alive, state.gateway.audit_stuck
    running, waiting = state.gateway.engine_load
    status = "ok" if alive and not audit_stuck else ("engine stopped" if not alive else "audit writer stuck")
    body = {"status": status, "model": state.model.name, "running": running, "waiting": waiting, "audit_queue": state.gateway.audit_depth}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


async def metrics(request: Request) -> Response:
    state: AppState = request.state.tandem
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


EngineFactory = Callable[[models.LoadedModel, EngineConfig, EngineMetrics], Engine]


def create_app(config: ServerConfig, loader: Callable[[], models.LoadedModel] | None = None, engine_factory: EngineFactory | None = None) -> Starlette:
    """`loader` replaces model loading (tests hand in a tiny model); by default `config.model`.
    `engine_factory` replaces the engine (protocol tests script its output)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        quiet_logs()  # after uvicorn has configured its loggers
        loaded = loader() if loader else models.load(config.model, config.quant)
        engine_metrics = EngineMetrics()
        Gauge("tandem_model_memory_bytes", "Bytes of model weights in memory.", registry=engine_metrics.registry).set(loaded.footprint_bytes)
        audit = AuditLog(config.audit_config(), engine_metrics.registry).start()
        if engine_factory is not None:
            engine = engine_factory(loaded, config.engine, engine_metrics)
        else:
            engine = Engine(loaded.model, loaded.tokenizer, config.engine, engine_metrics).start()
        gateway = Gateway(loaded, engine, audit, engine_metrics.registry)
        log.info("engine ready: %s, %s, %.1f MiB; audit log %s", loaded.name, loaded.quant, loaded.footprint_bytes / 2**20, audit.path)
        dialog = await DialogService.open(gateway, config.dialog_config())
        if config.demo_site and await dialog.store.site(DEMO_SITE.site_key) is None:
            await dialog.store.put_site(DEMO_SITE)
        try:
            yield {"tandem": AppState(loaded, gateway, engine_metrics.registry, int(time.time()), feedback.feedback_counter(engine_metrics.registry)),
                   "audit_review": audit_web.ReviewState(audit.config.directory, admin_token(config)),
                   "dialog": dialog}
        finally:
            await dialog.close()
            gateway.close()

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/metrics", metrics), *openai_api.routes, *feedback.routes, *audit_web.routes, *dialog_web.routes],
        middleware=[Middleware(BearerAuth, api_key=config.api_key)],
        exception_handlers={APIError: handle_api_error, HTTPException: handle_not_found, Exception: handle_unexpected},
        lifespan=lifespan,
    )


__all__ = ["ServerConfig", "create_app"]
