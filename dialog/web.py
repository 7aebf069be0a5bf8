"""The dialog's routes: the WebSocket, the widget script and its demo page."""

from __future__ import annotations

import functools
import html
import json
import re
import urllib.parse
from pathlib import Path

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from server.auth import RequireApiKey

from . import console, inbound

STATIC = Path(__file__).parent / "static"


async def dialog_socket(ws: WebSocket) -> None:
    await ws.state.dialog.endpoint(ws)


async def console_socket(ws: WebSocket) -> None:
    await console.endpoint(ws.state.dialog, ws)


CONSOLE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def console_page(request: Request) -> Response:
    """The console's page: plain JavaScript like the widget, under a policy that runs nothing else."""
    return FileResponse(STATIC / "console.html", media_type="text/html; charset=utf-8", headers=CONSOLE_HEADERS)


async def console_asset(request: Request) -> Response:
    name = request.url.path.lstrip("/")
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(STATIC / name, media_type=f"{kind}; charset=utf-8", headers=CONSOLE_HEADERS)


class RequireApiKeyForSite:
    """ASGI middleware for the socket: a site that trusts origins any client can claim (the demo
    site's loopback ones) needs the API key too, when one is set; every other site is checked by
    the service itself (site key, page origin, visitor token), since a widget has no API key."""

    def __init__(self, app: ASGIApp, api_key: str | None, site_key: str) -> None:
        self.app, self.site_key = app, site_key
        self.keyed = RequireApiKey(app, api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        await (self.keyed if (query.get("site_key") or [""])[0] == self.site_key else self.app)(scope, receive, send)


STATIC_HEADERS = {"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"}
SLOTS = {'/*{{widget.css}}*/ ""': "widget.css", "/*{{locales/en.json}}*/ {}": "locales/en.json"}


@functools.cache
def widget_source() -> str:
    """widget.js with widget.css (as a string) and its English words inlined: one file each to
    edit, one request for the page, and no inline <style> for a Content-Security-Policy to block.
    Built once per process: every page view of every site asks for it."""
    script = _compact((STATIC / "widget.js").read_text(encoding="utf-8"))
    for slot, name in SLOTS.items():
        text = (STATIC / name).read_text(encoding="utf-8")
        if name.endswith(".css"):
            text = "\n".join(line.strip() for line in text.splitlines() if line.strip())
        script = script.replace(slot, json.dumps(text) if name.endswith(".css") else json.dumps(json.loads(text), ensure_ascii=False), 1)
    return script


def _compact(script: str) -> str:
    """The script as served: without its comment lines and indentation (every visitor downloads
    it; the source keeps both). Only whole lines go: the script has no multi-line strings."""
    header_end = script.index("*/") + 2 if script.startswith("/*") else 0
    lines = (line.strip() for line in script[header_end:].splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("//"))


async def widget_js(request: Request) -> Response:
    # embedded on other sites by a plain <script> tag: cacheable briefly, no cookies needed
    return Response(widget_source(), media_type="text/javascript; charset=utf-8", headers=STATIC_HEADERS)


async def widget_css(request: Request) -> Response:
    """The same styles for browsers without constructed stylesheets (the widget links them)."""
    return FileResponse(STATIC / "widget.css", media_type="text/css; charset=utf-8", headers=STATIC_HEADERS)


SITE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


async def demo(request: Request) -> Response:
    """The demo page, for the `demo` site or, with `?site_key=KEY`, a preview of any site's widget."""
    key = request.query_params.get("site_key", "demo")
    if not SITE_KEY.match(key):
        return HTMLResponse("<p>site_key may hold letters, digits, '.', '_' and '-' only</p>", status_code=400)
    return HTMLResponse((STATIC / "demo.html").read_text().replace("{{site_key}}", html.escape(key, quote=True)))


def routes(api_key: str | None, demo_site_key: str) -> list[Route | WebSocketRoute]:
    return [
        WebSocketRoute("/v1/dialog", dialog_socket, middleware=[Middleware(RequireApiKeyForSite, api_key=api_key, site_key=demo_site_key)]),
        Route("/widget.js", widget_js, methods=["GET"]),  # open: embedded on customers' pages
        Route("/widget.css", widget_css, methods=["GET"]),
        Route("/widget/demo", demo, methods=["GET"]),
        # the staff console: the page is open (it holds nothing), its data needs a staff token
        Route("/console", console_page, methods=["GET"]),
        Route("/console.js", console_asset, methods=["GET"]),
        Route("/console.css", console_asset, methods=["GET"]),
        WebSocketRoute("/v1/console/socket", console_socket),
        Route("/v1/console/conversations/{cid}/transcript", console.transcript_download, methods=["GET"]),
        # a helpdesk's agent replies, signed with the site's webhook secret
        Route("/v1/dialog/conversations/{cid}/messages", inbound.agent_reply, methods=["POST"]),
    ]
