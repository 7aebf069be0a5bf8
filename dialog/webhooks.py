"""Signed webhooks: a site's helpdesk hears of every support conversation's events.

An outbox: `emit` writes an event to the chat store (one pending row for each of the site's
webhooks that wants it) before anything is sent, and a worker sends what is due, so a restart or a
receiver that is down loses none; it is sent later. Each event has an id (`Tandem-Event-Id`, and
`id` in the body) that a receiver keeps to drop a repeat: a delivery is sent again only when the
receiver did not answer 2xx. Each attempt is signed like Stripe's webhooks, the time of the attempt
inside the signed text (`Tandem-Signature: t=…,v1=…`), so a request captured and replayed later is
refused. The same secret signs what a helpdesk posts back (`verify_inbound`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import re
import secrets as _secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.clock import utc_now as now

from .shielded import shield_methods
from .store import new_id

log = logging.getLogger("tandem.webhooks")

EVENTS = (
    "conversation.created",
    "handoff.requested",
    "conversation.taken_over",
    "conversation.handed_back",
    "message.created",
    "conversation.closed",
    "conversation.rated",
)
ALL = "*"
STATUSES = ("pending", "delivered", "failed")
USER_AGENT = "Tandem-Webhooks/1"
SIGNATURE_HEADER = "Tandem-Signature"
TOLERANCE = 300  # seconds a signature's timestamp may be from the receiver's clock, either way
POLL_SECONDS = 5.0  # an idle worker looks again this often: rows another process wrote (`tandem webhooks redeliver`)
MAX_ERROR = 200  # characters of an attempt's error kept in the log

_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # (bounded: a float compares with it, and 15 digits is far past any clock)
_HEX = re.compile(r"[0-9a-fA-F]{64}")


class SignatureRefused(Exception):
    """A request whose `Tandem-Signature` does not hold; `code` says why: missing, malformed, expired or mismatch."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_secret() -> str:
    return "whsec_" + _secrets.token_urlsafe(32)


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Tandem-Signature` header's value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def _parse(header: str) -> tuple[int, list[str]]:
    """The timestamp and the v1 signatures of a header (several during a secret's rotation; other schemes are ignored)."""
    timestamps, signatures = [], []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if key == "t" and sep and _TIMESTAMP.fullmatch(value):
            timestamps.append(int(value))
        elif key == "v1" and sep and _HEX.fullmatch(value):
            signatures.append(value.lower())
    if len(timestamps) != 1 or not signatures:
        raise SignatureRefused("malformed", "the signature header needs one t=<unix seconds> and at least one v1=<hex>")
    return timestamps[0], signatures


def verify(secret: str, header: str | None, body: bytes, now: float | None = None, tolerance: int = TOLERANCE) -> None:
    """Returns when `header` signs `body` with `secret` at a time within `tolerance` seconds of
    `now`; raises SignatureRefused otherwise (and on anything a header could hold)."""
    if not header or not isinstance(header, str):
        raise SignatureRefused("missing", f"no {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureRefused("expired", f"the signature's time is more than {tolerance} s from now")
    expected = _digest(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureRefused("mismatch", "the signature does not match the body")


def backoff_delay(attempts: int, base_delay: float, max_delay: float) -> float:
    """Seconds until the next try after `attempts` failed ones: doubling from `base_delay` up to
    `max_delay`, give or take a fifth (so receivers coming back are not hit by every sender at once)."""
    return min(max_delay, base_delay * 2.0 ** min(max(attempts - 1, 0), 60)) * random.uniform(0.8, 1.2)


def check_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or any(c.isspace() for c in url):
        raise ValueError(f"a webhook's URL must be http:// or https:// with a host, e.g. https://helpdesk.example.com/tandem (got {url!r})")
    return url


def check_events(events: Sequence[str] | None) -> list[str]:
    if events is None:
        return [ALL]
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        raise ValueError(f"unknown event {', '.join(map(repr, unknown)) or '(none given)'}: choose from {', '.join(EVENTS)}")
    return list(dict.fromkeys(events))


def _wants(events_json: str, event: str) -> bool:
    wanted = json.loads(events_json)
    return ALL in wanted or event in wanted


def _body(payload: dict[str, Any]) -> str:
    """The event as it is signed and sent: compact JSON, UTF-8 (escaped to ASCII where text holds what UTF-8 cannot, a lone surrogate)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        body = json.dumps(payload, separators=(",", ":"))
    return body


def _short(exc: BaseException) -> str:
    message = str(exc).strip()
    return (f"{type(exc).__name__}: {message}" if message else type(exc).__name__)[:MAX_ERROR]


_HEADS = """
    SELECT d.id, d.body, d.event, d.attempts, d.next_attempt_at, w.url, w.secret
    FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
    WHERE d.rowid IN (SELECT min(rowid) FROM webhook_deliveries WHERE status = 'pending' GROUP BY webhook_id)
"""


@shield_methods
class Webhooks:
    """A site's webhooks, the outbox of their deliveries, and the worker that sends them (`start`, `close`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        registry: CollectorRegistry | None = None,
        *,
        base_delay: float = 2.0,
        max_delay: float = 600.0,
        max_attempts: int = 10,
        timeout: float = 10.0,
    ) -> None:
        self.engine = engine
        self.base_delay, self.max_delay, self.max_attempts, self.timeout = base_delay, max_delay, max_attempts, timeout
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._results: Counter | None = None
        if registry is not None:
            self._results = Counter("tandem_webhook_deliveries_total", "Webhook delivery attempts by result", ["result"], registry=registry)
            for result in ("delivered", "retry", "failed"):
                self._results.labels(result)

    # --- the webhooks ------------------------------------------------------------------------------
    async def add(self, site_key: str, url: str, events: list[str] | None = None) -> tuple[str, str]:
        """A new webhook of the site: its id and its secret (which signs both directions)."""
        check_url(url)
        chosen = check_events(events)
        hook_id, secret = new_id("whk"), new_secret()
        async with self.engine.begin() as conn:
            if (await conn.execute(text("SELECT 1 FROM sites WHERE site_key = :s"), {"s": site_key})).first() is None:
                raise ValueError(f"no site {site_key!r}")
            await conn.execute(
                text("INSERT INTO webhooks (id, site_key, url, secret, events, created_at) VALUES (:id, :s, :url, :secret, :events, :at)"),
                {"id": hook_id, "s": site_key, "url": url, "secret": secret, "events": json.dumps(chosen), "at": now()},
            )
        return hook_id, secret

    async def hooks(self, site_key: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT id, url, events, created_at FROM webhooks WHERE site_key = :s ORDER BY created_at, rowid"), {"s": site_key}
            )
            return [{"id": r.id, "url": r.url, "events": json.loads(r.events), "created_at": r.created_at} for r in rows]

    async def remove(self, webhook_id: str) -> bool:
        """The webhook and its delivery log."""
        async with self.engine.begin() as conn:
            await conn.execute(text("DELETE FROM webhook_deliveries WHERE webhook_id = :id"), {"id": webhook_id})
            return bool((await conn.execute(text("DELETE FROM webhooks WHERE id = :id"), {"id": webhook_id})).rowcount)

    async def secrets(self, site_key: str) -> list[str]:
        async with self.engine.connect() as conn:
            return [r.secret for r in await conn.execute(text("SELECT secret FROM webhooks WHERE site_key = :s"), {"s": site_key})]

    async def verify_inbound(self, site_key: str, header: str | None, body: bytes) -> None:
        """A request a helpdesk sent (an agent's reply): it must be signed with one of the site's webhook secrets."""
        keys = await self.secrets(site_key)
        if not keys:
            raise SignatureRefused("mismatch", "the site has no webhooks, so nothing can sign for it")
        for key in keys:
            try:
                verify(key, header, body)
                return
            except SignatureRefused as exc:
                if exc.code != "mismatch":  # (missing, malformed, expired: the same with any secret)
                    raise
        raise SignatureRefused("mismatch", "the signature matches none of the site's webhook secrets")

    # --- events ------------------------------------------------------------------------------------
    async def emit(self, site_key: str, event: str, data: dict[str, Any]) -> str:
        """Write the event for each of the site's webhooks that wants it (one transaction) and wake the worker; its id."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: choose from {', '.join(EVENTS)}")
        event_id, created = new_id("evt"), now()
        body = _body({"id": event_id, "type": event, "created_at": created, "site_key": site_key, "data": data})
        async with self.engine.begin() as conn:
            hooks = await conn.execute(text("SELECT id, events FROM webhooks WHERE site_key = :s ORDER BY rowid"), {"s": site_key})
            rows = [
                {"id": f"{event_id}.{h.id}", "hook": h.id, "event": event, "body": body, "due": time.time(), "at": created}
                for h in hooks
                if _wants(h.events, event)
            ]
            if rows:
                await conn.execute(
                    text(
                        "INSERT INTO webhook_deliveries (id, webhook_id, event, body, status, attempts, next_attempt_at, created_at)"
                        " VALUES (:id, :hook, :event, :body, 'pending', 0, :due, :at)"
                    ),
                    rows,
                )
        if rows:
            self._poke()
        return event_id

    async def deliveries(self, site_key: str, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The site's delivery log, newest first."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT d.id, d.webhook_id, d.event, d.status, d.attempts, d.last_code, d.last_error, d.next_attempt_at,"
                    " d.created_at, d.delivered_at, w.url FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id"
                    " WHERE w.site_key = :s"
                    + (" AND d.status = :status" if status else "")
                    + " ORDER BY d.created_at DESC, d.rowid DESC LIMIT :limit"
                ),
                {"s": site_key, "status": status, "limit": max(0, limit)},
            )
            return [dict(r._mapping) for r in rows]

    async def redeliver(self, delivery_id: str) -> bool:
        """A failed delivery back in the queue, due now, with its attempts counted afresh."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text(
                    "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = :due"
                    " WHERE id = :id AND status = 'failed'"
                ),
                {"id": delivery_id, "due": time.time()},
            )
        if result.rowcount:
            self._poke()
        return bool(result.rowcount)

    # --- the worker --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,  # a redirect is not a 2xx: the receiver's URL is the one it was given
            headers={"User-Agent": USER_AGENT},
        )
        self._task = asyncio.create_task(self._work(), name="tandem-webhooks")

    async def close(self) -> None:
        """Let the deliveries in flight finish (at most their timeout), then stop; what is pending stays for the next start."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._poke()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.timeout + 5)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _work(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            self._wake.clear()  # (before the round: an event emitted during it wakes the next wait at once)
            try:
                wait = await self._round()
            except Exception:
                log.exception("webhooks: a round of deliveries failed; trying again")
                wait = min(self.max_delay, max(self.base_delay, 1.0))
            if wait > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(wait, POLL_SECONDS))

    async def _round(self) -> float:
        """Send each webhook's oldest pending delivery if it is due; the seconds until the next one is (0: go again)."""
        async with self.engine.connect() as conn:
            heads = list(await conn.execute(text(_HEADS)))
        current = time.time()
        due = [h for h in heads if h.next_attempt_at <= current]
        if due:
            outcomes = await asyncio.gather(*(self._deliver(h) for h in due), return_exceptions=True)
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            for error in errors:
                log.error("webhooks: a delivery could not be recorded", exc_info=error)
            return min(self.max_delay, max(self.base_delay, 1.0)) if errors else 0.0
        return min((h.next_attempt_at for h in heads), default=current + POLL_SECONDS) - current

    async def _deliver(self, row: Any) -> None:
        assert self._client is not None
        body = row.body.encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "Tandem-Event": row.event,
            "Tandem-Event-Id": row.id.partition(".")[0],
            SIGNATURE_HEADER: sign(row.secret, body, int(time.time())),
        }
        code: int | None = None
        try:
            async with self._client.stream("POST", row.url, content=body, headers=headers) as response:  # (its body is not read)
                code = response.status_code
            error = None if 200 <= code < 300 else f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = _short(exc)
        async with self.engine.begin() as conn:
            if error is None:
                await self._delivered(conn, row.id, code)
            else:
                await self._attempt_failed(conn, row, code, error)

    async def _delivered(self, conn: AsyncConnection, delivery_id: str, code: int | None) -> None:
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, last_code = :code, last_error = NULL,"
                " delivered_at = :at WHERE id = :id AND status = 'pending'"
            ),
            {"id": delivery_id, "code": code, "at": now()},
        )
        self._count("delivered")

    async def _attempt_failed(self, conn: AsyncConnection, row: Any, code: int | None, error: str) -> None:
        attempts = row.attempts + 1
        failed = attempts >= self.max_attempts
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET status = :status, attempts = :attempts, last_code = :code, last_error = :error,"
                " next_attempt_at = :due WHERE id = :id AND status = 'pending'"
            ),
            {
                "id": row.id,
                "status": "failed" if failed else "pending",
                "attempts": attempts,
                "code": code,
                "error": error,
                "due": time.time() + backoff_delay(attempts, self.base_delay, self.max_delay),
            },
        )
        self._count("failed" if failed else "retry")
        if failed:
            log.warning("webhooks: %s failed after %d attempts (%s)", row.id, attempts, error)

    def _count(self, result: str) -> None:
        if self._results is not None:
            self._results.labels(result).inc()


def subscribed(events: Iterable[str]) -> str:
    """How a webhook's events read in a listing."""
    return "all events" if ALL in events else ", ".join(events)
