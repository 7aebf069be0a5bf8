"""The dialog's routes: the WebSocket, the widget script and its demo page."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

STATIC = Path(__file__).parent / "static"


async def dialog_socket(ws: WebSocket) -> None:
    await ws.state.dialog.endpoint(ws)


async def widget_js(request: Request) -> Response:
    # embedded on other sites by a plain <script> tag: cacheable briefly, no cookies needed
    return FileResponse(STATIC / "widget.js", media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


async def demo(request: Request) -> Response:
    return FileResponse(STATIC / "demo.html", media_type="text/html; charset=utf-8")


routes = [
    WebSocketRoute("/v1/dialog", dialog_socket),
    Route("/widget.js", widget_js, methods=["GET"]),
    Route("/widget/demo", demo, methods=["GET"]),
]
