"""Who may call what. Each mount of the app names the credential it requires, as middleware on
that mount (`app.py` composes them); nothing is let through by the shape of its path. The bearer
token is read from a request here and nowhere else.

- `/v1` (the OpenAI routes and feedback), `/tokenize`, `/detokenize` and `/metrics`: the API key,
  when one is configured.
- `/audit/api` and `/audit/static`: the admin token (`server/audit/web.py`, bearer or session cookie).
- `/v1/dialog`: the site's own checks (site key, page origin, visitor token); the `demo` site,
  which trusts loopback origins any client can claim, also needs the API key when one is set.
- `/v1/console/socket` and `/v1/console/conversations/…/transcript`: a staff token (`dialog/staff.py`:
  `tandem staff add`), checked by the dialog service, for the staff member's own sites only.
- `POST /v1/dialog/conversations/…/messages`: signed with the site's webhook secret (`dialog/inbound.py`).
- `/healthz`, `/widget.js`, `/widget.css`, `/widget/demo`, `/console` and its script and styles (the
  page holds nothing), `/audit` (the sign-in page) and its login/logout: open.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (raw ASGI headers), or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() if text[:7].lower() == "bearer " else None
    return None


def same_secret(given: str | None, secret: str) -> bool:
    """A constant-time comparison that is False for a missing credential."""
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), secret.encode())


class RequireApiKey:
    """ASGI middleware for a mount: with an API key configured, every request must bear it."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key and scope["type"] in ("http", "websocket") and not same_secret(bearer(scope["headers"]), self.api_key):
            await refuse(
                scope,
                receive,
                send,
                APIError(
                    401, "missing or wrong API key (send Authorization: Bearer <key>)", type="authentication_error", code="invalid_api_key"
                ),
            )
            return
        await self.app(scope, receive, send)


async def refuse(scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
    """An HTTP request gets the error as JSON; a WebSocket is closed with 1008 (policy violation)."""
    if scope["type"] == "http":
        await error.response()(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008})
