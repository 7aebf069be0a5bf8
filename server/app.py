"""The HTTP app: a Starlette application whose lifespan loads the model once and owns the engine."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import models, openai_api
from .engine import Engine, EngineConfig, EngineMetrics
from .errors import APIError, handle_api_error, handle_not_found, handle_unexpected
from .state import AppState

log = logging.getLogger("tandem.server")

OPEN_PATHS = ("/healthz",)  # answered without an API key, so load balancers can probe


@dataclass(frozen=True)
class ServerConfig:
    model: str | None = None
    quant: str = "none"
    api_key: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)


class BearerAuth:
    """Requires `Authorization: Bearer <api key>` on every route but the open ones."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key and scope["type"] in ("http", "websocket") and scope["path"] not in OPEN_PATHS:
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


async def healthz(request: Request) -> Response:
    state: AppState = request.state.tandem
    alive = state.engine.alive
    body = {"status": "ok" if alive else "engine stopped", "model": state.model.name,
            "running": state.engine.running, "waiting": state.engine.waiting}
    return JSONResponse(body, status_code=200 if alive else 503)


async def metrics(request: Request) -> Response:
    state: AppState = request.state.tandem
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(config: ServerConfig, loader: Callable[[], models.LoadedModel] | None = None) -> Starlette:
    """`loader` replaces model loading (tests hand in a tiny model); by default `config.model`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, AppState]]:
        loaded = loader() if loader else models.load(config.model, config.quant)
        engine_metrics = EngineMetrics()
        Gauge("tandem_model_memory_bytes", "Bytes of model weights in memory.", registry=engine_metrics.registry).set(loaded.footprint_bytes)
        engine = Engine(loaded.model, loaded.tokenizer, config.engine, engine_metrics).start()
        log.info("engine ready: %s, %s, %.1f MiB", loaded.name, loaded.quant, loaded.footprint_bytes / 2**20)
        try:
            yield {"tandem": AppState(loaded, engine, engine_metrics.registry, int(time.time()))}
        finally:
            engine.close()

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/metrics", metrics), *openai_api.routes],
        middleware=[Middleware(BearerAuth, api_key=config.api_key)],
        exception_handlers={APIError: handle_api_error, HTTPException: handle_not_found, Exception: handle_unexpected},
        lifespan=lifespan,
    )


__all__ = ["Engine", "ServerConfig", "create_app"]
