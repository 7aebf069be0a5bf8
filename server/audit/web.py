"""`/audit`: the review page and its JSON API, behind the admin token.

The token is sent as `Authorization: Bearer <token>` (API clients) or, after signing in on the
page, as an HttpOnly, SameSite=Strict cookie holding an HMAC of it (never the token itself).
The API and the page's assets are mounts that require it (`RequireAdmin`); without it they answer
401. Open are only the page itself, which shows the sign-in form to whoever lacks the token, and
the sign-in and sign-out forms. The page is static HTML and JavaScript served from
here (no CDN), renders every value as text, and is locked down by a Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth import bearer, refuse, same_secret
from ..errors import APIError
from .record import Envelope
from .review import AuditReader, Filters

STATIC = Path(__file__).parent / "static"
COOKIE = "tandem_audit"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class ReviewState:
    directory: Path
    token: str
    database_url: str | None = None
    _reader: AuditReader | None = field(default=None, repr=False)

    @property
    def reader(self) -> AuditReader:
        if self._reader is None:
            self._reader = AuditReader(self.directory, database_url=self.database_url)
        return self._reader

    def close(self) -> None:
        """Its connections go with the server (a PostgreSQL log's are sockets, not a file)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def session_value(self) -> str:
        return hmac.new(self.token.encode(), b"tandem-audit-session", hashlib.sha256).hexdigest()

    def authorized(self, request: Request) -> bool:
        if same_secret(bearer(request.scope["headers"]), self.token):
            return True
        return same_secret(request.cookies.get(COOKIE) or None, self.session_value())


class RequireAdmin:
    """ASGI middleware for the review's mounts: the admin token, as a bearer or the session cookie."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _state(Request(scope)).authorized(Request(scope)):
            await refuse(scope, receive, send, _unauthorized_error())
            return
        await self.app(scope, receive, send)


def _state(request: Request) -> ReviewState:
    return request.state.audit_review  # type: ignore[no-any-return]


def _login_page(status: int, message: str = "") -> HTMLResponse:
    html = (STATIC / "login.html").read_text().replace("{{message}}", message)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _unauthorized_error() -> APIError:
    return APIError(
        401,
        "the audit review needs the admin token (Authorization: Bearer <token>)",
        type="authentication_error",
        code="admin_token_required",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def page(request: Request) -> Response:
    if not _state(request).authorized(request):
        return _login_page(401)
    return FileResponse(STATIC / "audit.html", headers=SECURITY_HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ("audit.js", "audit.css"):
        return APIError(404, "no such asset", code="not_found").response()
    return FileResponse(STATIC / name, headers=SECURITY_HEADERS)


async def login(request: Request) -> Response:
    state = _state(request)
    # a one-field urlencoded form: the standard library parses it (Starlette's form parser needs python-multipart)
    fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (fields.get("token") or [""])[0].strip()
    if not same_secret(given or None, state.token):
        return _login_page(401, "That token is not right.")
    response = RedirectResponse("/audit", status_code=303)
    response.set_cookie(
        COOKIE, state.session_value(), httponly=True, samesite="strict", path="/audit", secure=request.url.scheme == "https"
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/audit", status_code=303)
    response.delete_cookie(COOKIE, path="/audit")
    return response


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"seq": row["seq"], "id": row["id"], **Envelope.read(row["record"]).summary()}


def _seq(value: str, name: str) -> int:
    """A record number as SQLite can hold it: plain ASCII digits, at most 18 of them."""
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise ValueError(f"{name} must be a whole number below 10**18, got {value[:32]!r}")
    return int(value)


FILTER_FIELDS = ("since", "until", "surface", "verdict", "outcome", "conversation", "user", "type")


async def api_records(request: Request) -> Response:
    state = _state(request)
    q = request.query_params
    try:
        before = _seq(q["before"], "before") if q.get("before") else None
        limit = min(max(_seq(q.get("limit", "50"), "limit"), 1), 500)
        filters = Filters(**{k: q.get(k) or None for k in FILTER_FIELDS}, before_seq=before)
        rows = await asyncio.to_thread(state.reader.search, filters, limit)
    except ValueError as exc:
        return APIError(400, str(exc), code="invalid_filter").response()
    return JSONResponse({"records": [_summary(r) for r in rows], "next_before": rows[-1]["seq"] if len(rows) == limit else None})


async def api_record(request: Request) -> Response:
    state = _state(request)
    row = await asyncio.to_thread(state.reader.get, request.path_params["ref"])
    if row is None:
        return APIError(404, "no such record", param="ref", code="not_found").response()
    return JSONResponse(row)


async def api_verify(request: Request) -> Response:
    state = _state(request)
    result = await asyncio.to_thread(state.reader.verify)
    return JSONResponse(result.to_json())


routes = [
    Route("/audit", page, methods=["GET"]),  # open: the review page, or the sign-in form to whoever lacks the token
    Route("/audit/login", login, methods=["POST"]),  # open: it checks the token it is given
    Route("/audit/logout", logout, methods=["POST"]),
    Mount("/audit/static", routes=[Route("/{name}", asset, methods=["GET"])], middleware=[Middleware(RequireAdmin)]),
    Mount(
        "/audit/api",
        middleware=[Middleware(RequireAdmin)],
        routes=[
            Route("/records", api_records, methods=["GET"]),
            Route("/records/{ref}", api_record, methods=["GET"]),
            Route("/verify", api_verify, methods=["GET"]),
        ],
    ),
]
