"""The dialog's routes: the WebSocket, the widget script and its demo page."""

from __future__ import annotations

import html
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

STATIC = Path(__file__).parent / "static"


async def dialog_socket(ws: WebSocket) -> None:
    await ws.state.dialog.endpoint(ws)


async def widget_js(request: Request) -> Response:
    # embedded on other sites by a plain <script> tag: cacheable briefly, no cookies needed
    return FileResponse(STATIC / "widget.js", media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


SITE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


async def demo(request: Request) -> Response:
    """The demo page, for the `demo` site or, with `?site_key=KEY`, a preview of any site's widget."""
    key = request.query_params.get("site_key", "demo")
    if not SITE_KEY.match(key):
        return HTMLResponse("<p>site_key may hold letters, digits, '.', '_' and '-' only</p>", status_code=400)
    return HTMLResponse((STATIC / "demo.html").read_text().replace("{{site_key}}", html.escape(key, quote=True)))


routes = [
    WebSocketRoute("/v1/dialog", dialog_socket),
    Route("/widget.js", widget_js, methods=["GET"]),
    Route("/widget/demo", demo, methods=["GET"]),
]
