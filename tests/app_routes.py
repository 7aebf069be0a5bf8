"""Every route of the app, found by walking its route tree (mounts included), for the tests that call them all."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

FILLED = {
    "{name}": "audit.js",
    "{ref}": "1",
    "{cid}": "conv_missing",
    "{model:path}": "tiny-llama",
}  # a value for each path parameter the app's routes have


def walk(routes: list[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route; a WebSocket route's method is "WS"."""
    found = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= walk(list(route.routes), prefix + route.path)
        elif isinstance(route, WebSocketRoute):
            found.add(("WS", prefix + route.path))
        elif isinstance(route, Route):
            found |= {(m, prefix + route.path) for m in route.methods or ("GET",) if m != "HEAD"}
    return found


def url_of(path: str) -> str:
    for hole, value in FILLED.items():
        path = path.replace(hole, value)
    return path
