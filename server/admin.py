"""Hot model swap, behind the admin token: `POST /admin/model` (what `tandem models use` calls).

The new backend (a model loaded here, or a list of upstreams) is opened while the old one keeps
serving; then new calls go to it, calls already running finish where they started, and the old
backend is closed when its last call ends. Nothing is refused and no stream is cut. `GET
/admin/model` says what serves each surface and what is still draining.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .backends.spec import BackendSpec
from .errors import APIError
from .routing import ROLES, SURFACES
from .state import AppState

log = logging.getLogger("tandem.admin")
FIELDS = {"model", "quant", "upstreams", "surface"}


def _state(request: Request) -> AppState:
    return request.state.tandem  # type: ignore[no-any-return]


def _serving(state: AppState) -> dict[str, Any]:
    return {
        "serving": [
            {"model": m.name, "backend": m.backend, "quantization": m.quant, "surfaces": surfaces} for m, surfaces in state.gateway.models()
        ],
        "draining": [{"model": d.model, "calls": d.calls} for d in state.gateway.draining()],
    }


async def status(request: Request) -> Response:
    return JSONResponse(_serving(_state(request)))


def _spec(body: Any) -> tuple[BackendSpec, list[str]]:
    """The swap a body asks for: {"model": NAME, "quant"?} or {"upstreams": [URL, ...]}, and
    optionally "surface": "completion" | "chat" (default: both)."""
    if not isinstance(body, dict):
        raise APIError(400, 'the body is a JSON object: {"model": NAME} or {"upstreams": [URL, ...]}')
    unknown = set(body) - FIELDS
    if unknown:
        raise APIError(400, f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    model, quant, upstreams, surface = body.get("model"), body.get("quant", "auto"), body.get("upstreams"), body.get("surface")
    if (model is None) == (upstreams is None):
        raise APIError(400, "name a model to load here or a list of upstreams, one of the two", param="model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "model is a name, a path or a Hugging Face id", param="model")
    if not isinstance(quant, str):
        raise APIError(400, "quant is a string", param="quant")
    if upstreams is not None and (not isinstance(upstreams, list) or not upstreams or not all(isinstance(u, str) for u in upstreams)):
        raise APIError(400, "upstreams is a non-empty list of URLs", param="upstreams")
    if surface is not None and surface not in ROLES:
        raise APIError(400, f"surface is one of {', '.join(ROLES)} (or absent: both)", param="surface")
    try:
        spec = BackendSpec(model=model, quant=quant, upstreams=tuple(upstreams or ()))
    except ValueError as exc:
        raise APIError(400, str(exc), param="upstreams") from None
    return spec, [ROLES[surface]] if surface else list(SURFACES)


async def swap(request: Request) -> Response:
    state = _state(request)
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise APIError(400, "the body is not JSON") from None
    spec, surfaces = _spec(body)
    if state.swapping.locked():
        raise APIError(409, "a swap is already in progress; try again when it is done", type="conflict", code="swap_in_progress")
    async with state.swapping:
        log.info("hot swap: opening %s for %s", spec.describe(), " and ".join(surfaces))
        try:
            backend = await state.open_backend(spec)
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise APIError(400, f"cannot open {spec.describe()}: {exc}", param="model" if spec.model is not None else "upstreams") from None
        state.gateway.swap(backend, surfaces)
        log.info("hot swap: %s now serves %s", backend.info.name, " and ".join(surfaces))
    return JSONResponse(_serving(state))


routes = [Route("/model", status, methods=["GET"]), Route("/model", swap, methods=["POST"])]
