"""`WS /v1/dialog`: the support chat's WebSocket service (protocol v1 of design.md).

One `Hub` per live conversation holds its seq counter, the sockets watching it and its one
running generation. Every frame a hub sends gets the next seq and is queued for the store, which
writes them in small batches; a socket that (re)joins is, under the hub's lock, first given what
it missed from the store and then added to the live watchers, so each frame arrives exactly once.
A generation belongs to the conversation, not the socket: a dropped connection does not stop it,
and the next socket picks it up.

One generation per conversation holds across sockets: a message is looked up, checked and claimed
(`Hub.answering`) under the hub's lock, without letting go of it in between, so of two sockets
sending at once one is answered and the other told `busy`, and a retry racing its original with
the same `client_msg_id` is acknowledged as that message. The store keeps a client's id only as a
keyed hash (`client_ref`): the ack a client is sent live echoes its own id, the stored copy that a
resume replays carries the hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import IntegrityError
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.gateway import Actor, Call, CallFailed, ChatPrompt, Gateway, Params, Priority, Screened
from server.settings import tandem_home

from . import frames, locales
from .errors import PLAIN_WORDS, said
from .grounding import Grounding, ground
from .handoff import Handoff, asks_for_person
from .identity import IdentityRefused, verify
from .knowledge.embeddings import Embedder, default_embedder
from .knowledge.index import KnowledgeBase
from .limits import Limit
from .live import Live
from .staff import StaffDirectory
from .store import Message, Site, Store, new_id
from .tokens import Visitor, VisitorTokens
from .webhooks import Webhooks

log = logging.getLogger("tandem.dialog")


@dataclass(frozen=True)
class DialogConfig:
    directory: Path | None = None  # the chat store and the visitor-token key; default: $TANDEM_HOME/dialog
    database_url: str | None = None  # the chat store on PostgreSQL (postgresql+asyncpg://…) instead of the directory's SQLite file
    redis_url: str | None = None  # what is live across replicas (dialog/live.py): who answers a conversation, the frames as made
    max_message_chars: int = 4000
    max_answer_tokens: int = 256
    temperature: float = 0.0
    visitor_messages_per_minute: int = 20
    ip_messages_per_minute: int = 60
    ip_connections_per_minute: int = 60
    flush_seconds: float = 0.1  # at most this much of a streaming answer is lost to a crash
    lease_seconds: float = 15.0  # on a shared store: a replica silent this long is dead, and its cut answers are marked by another
    hello_timeout: float = 10.0

    @property
    def home(self) -> Path:
        return self.directory or tandem_home() / "dialog"

    @property
    def db_path(self) -> Path:
        return self.home / "chat.db"

    @property
    def store_location(self) -> Path | str:
        return self.database_url or self.db_path

    @property
    def key_path(self) -> Path:
        return self.home / "visitor.key"


class Client:
    """One socket. Sends never raise: a dead socket just stops receiving."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.alive = True
        self.locale = "en"  # the visitor's language, once the hello has said it
        self.seen = 0  # the hub's frames up to this seq it had before it joined (ahead of the store: not relayed again)

    async def send(self, frame: dict[str, Any]) -> None:
        if not self.alive:
            return
        try:
            await self.ws.send_json(frame)
        except Exception:  # closed mid-send: the client will resume from its last seq
            self.alive = False


class Hub:
    def __init__(self, cid: str, last_seq: int) -> None:
        self.cid, self.seq = cid, last_seq
        self.lock = asyncio.Lock()
        self.users = 0  # sockets holding this hub, joined or still joining: it is not released under them
        self.clients: set[Client] = set()
        self.watchers: set[Any] = set()  # staff consoles reading the conversation as it streams
        self.task: asyncio.Task[None] | None = None
        self.answering: str | None = None  # the message being generated; cleared as its `done` goes out
        self.pending: list[dict[str, Any]] = []
        self.updates: dict[str, dict[str, Any]] = {}
        self.last_flush = time.monotonic()
        self.writing: asyncio.Future[None] | None = None  # the last flush, which a cancelled answer may leave running
        self.live: Live | None = None  # with Redis: flushed frames are published for the other replicas
        self.following: asyncio.Task[None] | None = None  # relaying an answer another replica is making

    @property
    def generating(self) -> bool:
        return self.answering is not None

    async def emit(self, frame: dict[str, Any], stored: dict[str, Any] | None = None, send: bool = True) -> dict[str, Any]:
        """Number, queue for the store and send one frame (the caller holds the lock); `stored` is
        what the store keeps of it, and a resume replays, where that differs from what is sent.
        With `send=False` the caller sends it (`send`) once it is stored."""
        self.seq += 1
        frame = {**frame, "seq": self.seq}
        self.pending.append(frame if stored is None else {**stored, "seq": self.seq})
        if send:
            await self.send(frame)
        return frame

    async def send(self, frame: dict[str, Any]) -> None:
        for client in list(self.clients):
            if frame["seq"] > client.seen:
                await client.send(frame)
            if not client.alive:
                self.clients.discard(client)
        for console in list(self.watchers):
            await console.send({"type": "frame", "conversation_id": self.cid, "frame": frame})

    async def flush(self, store: Store) -> None:
        if self.pending or self.updates:
            pending, updates = self.pending, self.updates
            self.pending, self.updates = [], {}
            previous, answering, live = self.writing, self.generating, self.live

            async def write() -> None:
                if previous is not None:  # in order: a flush its cancelled caller stopped waiting for ends first
                    await asyncio.wait([previous])
                await store.append_frames(self.cid, pending, updates)
                if live is not None:
                    await live.publish(self.cid, pending, answering)

            self.writing = asyncio.ensure_future(write())
            await asyncio.shield(self.writing)
        self.last_flush = time.monotonic()


class DialogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ratings = Counter(
            "tandem_dialog_ratings", "Visitors' ratings: thumbs on answers, 1-5 for conversations.", ["kind", "value"], registry=registry
        )
        self.handoffs = Counter("tandem_dialog_handoffs", "Conversations whose visitor asked for a person.", ["reason"], registry=registry)
        self.relayed = Counter(
            "tandem_dialog_relayed_answers", "Answers another replica was making, relayed from Redis to sockets here.", registry=registry
        )


class DialogService(Handoff):
    def __init__(
        self,
        store: Store,
        gateway: Gateway,
        tokens: VisitorTokens,
        config: DialogConfig,
        embedder: Embedder | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store, self.gateway, self.tokens, self.config = store, gateway, tokens, config
        self.hubs: dict[str, Hub] = {}
        self.consoles: set[Any] = set()  # signed-in staff consoles (dialog/console.py)
        self.staff = StaffDirectory(store.engine)
        registry = registry or CollectorRegistry()
        self.metrics = DialogMetrics(registry)
        self.webhooks = Webhooks(store.engine, registry)
        self.knowledge = KnowledgeBase(store.engine, embedder)
        self.replica = new_id("rep")  # this server, in a store several replicas share
        self._watch: asyncio.Task[None] | None = None
        self.draining = False  # the replica is stopping: new sockets go elsewhere, running answers finish
        self.live = Live(config.redis_url, self.replica, config.lease_seconds) if config.redis_url else None
        self.visitor_limit = Limit("visitor", config.visitor_messages_per_minute, 60, self.live)
        self.ip_limit = Limit("ip", config.ip_messages_per_minute, 60, self.live)
        self.connect_limit = Limit("connect", config.ip_connections_per_minute, 60, self.live)
        if self.live is not None:
            live = self.live
            up = Gauge(
                "tandem_redis_up", "1 while Redis answers (what is live is shared across replicas), 0 while it is away.", registry=registry
            )
            up.set_function(lambda: float(live.up))

    @classmethod
    async def open(cls, gateway: Gateway, config: DialogConfig, registry: CollectorRegistry | None = None) -> DialogService:
        tokens = VisitorTokens.load_or_create(config.key_path)
        store = await Store.open(config.store_location, client_ref=tokens.client_ref)
        embedder = await asyncio.to_thread(default_embedder)  # (unpacked and verified on the first start only)
        service = cls(store, gateway, tokens, config, embedder, registry)
        await service._interrupt_cut_answers()
        service.webhooks.start()
        if config.database_url is not None:
            service._watch = asyncio.create_task(service._watch_replicas(), name="tandem-replicas")
        return service

    def begin_drain(self) -> None:
        self.draining = True

    @property
    def busy(self) -> bool:
        """An answer (or a held message) is still being made, or its frames are not all stored yet."""
        return any(hub.generating or hub.pending or (hub.task is not None and not hub.task.done()) for hub in self.hubs.values())

    async def _interrupt_cut_answers(self) -> None:
        """Answers cut by a stopped server: at start-up all of them on a store of this server's own;
        on a shared one, those of replicas whose heartbeat stopped (this one's beats first)."""
        shared = self.config.database_url is not None
        if shared:
            await self.store.heartbeat(self.replica)
        cut = await self.store.interrupt_streaming(self.replica, self.config.lease_seconds if shared else None)
        if cut:
            log.warning("dialog: %d answers cut by a stopped server marked interrupted", len(cut))
            for cid, _ in cut:
                await self._free_dead_claim(cid)  # (before the visitor hears: its next message is answered)
                await self.notify(cid)

    async def _watch_replicas(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            try:
                await self._interrupt_cut_answers()
            except Exception:
                log.exception("dialog: the replicas' heartbeat failed; trying again")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        tasks = [hub.task for hub in self.hubs.values() if hub.task is not None and not hub.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.webhooks.close()
        if self.live is not None:
            await self.live.close()
        if self.config.database_url is not None:
            await self.store.forget_replica(self.replica)  # a clean stop: nothing of this replica's is left streaming
        await self.store.close()

    async def _hub(self, cid: str) -> Hub:
        """The conversation's one hub, counted as used by the caller until it calls `_leave`."""
        hub = self.hubs.get(cid)
        if hub is None:
            conv = await self.store.conversation(cid)
            hub = self.hubs.setdefault(cid, Hub(cid, conv["last_seq"] if conv else 0))
            hub.live = self.live
        hub.users += 1  # no await since the lookup: a hub being joined is never released (else a second hub, a second generation)
        return hub

    def _leave(self, hub: Hub, client: Client) -> None:
        hub.clients.discard(client)
        hub.users -= 1
        if not hub.clients and hub.following is not None:
            hub.following.cancel()
        self._release(hub)

    def _release(self, hub: Hub) -> None:
        busy = hub.generating or (hub.task is not None and not hub.task.done())
        if hub.users <= 0 and not hub.clients and not busy and not hub.pending and self.hubs.get(hub.cid) is hub:
            del self.hubs[hub.cid]

    # --- the socket --------------------------------------------------------------------------------
    async def endpoint(self, ws: WebSocket) -> None:
        ip = ws.client.host if ws.client else "unknown"
        await ws.accept()
        if self.draining:  # 1012 "service restart": the widget reconnects, and the balancer sends it to another replica
            await ws.close(code=1012, reason="draining")
            return
        client = Client(ws)
        hub: Hub | None = None
        try:
            site, visitor, cid, token, hello = await self._handshake(ws, ip)
            hub = await self._hub(cid)
            await self._join(hub, client, site, cid, token, hello)
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    frame = frames.parse(frames.text_of(message))
                    if isinstance(frame, frames.Ping):
                        await client.send({"type": "pong"})
                    elif isinstance(frame, frames.Hello):
                        raise frames.FrameError("already_greeted", "this connection has already said hello")
                    elif isinstance(frame, frames.Cancel):
                        await self._cancel(hub)
                    elif isinstance(frame, frames.Identify):
                        await self._identify(hub, site, client, frame)
                    elif isinstance(frame, frames.Handoff):
                        await self._check_rate(visitor, ip)  # (each is an audit record and a webhook event: limited like messages)
                        async with hub.lock:
                            await self.request_handoff(hub, site, visitor.visitor_id, "button")
                    elif isinstance(frame, frames.Rate):
                        await self._check_rate(visitor, ip)
                        await self.rate(hub, site, visitor.visitor_id, client, frame)
                    else:
                        await self._message(hub, site, visitor, ip, client, frame)
                except frames.FrameError as err:
                    await client.send(err.frame())
                except (WebSocketDisconnect, asyncio.CancelledError):
                    raise
                except Exception:  # one failed frame (a store error, say) must not end the conversation
                    log.exception("dialog: frame failed in %s", hub.cid)
                    await client.send(frames.FrameError("error", PLAIN_WORDS["error"]).frame())
        except frames.FrameError as err:  # refused at the door: say why, then close
            await client.send(err.frame())
            with contextlib.suppress(Exception):
                await ws.close(code=4403 if err.code in ("origin_not_allowed", "forbidden") else 4400)
        except WebSocketDisconnect:
            pass
        except Exception:  # a failure at the door (the store, say): an error frame, never a silent drop
            log.exception("dialog: connection failed before its first frame")
            await client.send(frames.FrameError("error", PLAIN_WORDS["error"]).frame())
            with contextlib.suppress(Exception):
                await ws.close(code=1011)
        finally:
            if hub is not None:
                self._leave(hub, client)

    async def _handshake(self, ws: WebSocket, ip: str) -> tuple[Site, Visitor, str, str, frames.Hello]:
        wait = await self.connect_limit.check(ip)
        if wait is not None:
            raise frames.FrameError("rate_limited", "Too many connections from your network. Please wait a moment.", retry_after=wait)
        site_key = ws.query_params.get("site_key", "")
        site = await self.store.site(site_key)
        if site is None:
            raise frames.FrameError("unknown_site", f"no site with key {site_key[:64]!r}")
        if not site.allows(ws.headers.get("origin")):
            raise frames.FrameError("origin_not_allowed", "This chat is not enabled for this website.")
        try:
            message = await asyncio.wait_for(ws.receive(), self.config.hello_timeout)
        except asyncio.TimeoutError:
            raise frames.FrameError("hello_required", "the first frame must be hello") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect()
        hello = frames.parse(frames.text_of(message))
        if not isinstance(hello, frames.Hello):
            raise frames.FrameError("hello_required", "the first frame must be hello")
        if hello.v not in frames.SUPPORTED_VERSIONS:
            raise frames.FrameError("unsupported_version", f"this server speaks dialog protocol v1 to v{frames.PROTOCOL_VERSION}")
        if hello.site_key != site.site_key:
            raise frames.FrameError("forbidden", "the hello names another site than the connection")
        visitor = self.tokens.verify(hello.token) if hello.token else None
        if hello.token and (visitor is None or visitor.site_key != site.site_key):
            raise frames.FrameError("forbidden", "this visitor token is not valid for this site")
        token = hello.token
        if visitor is None:
            token, visitor = self.tokens.issue(site.site_key)
        if hello.conversation_id:
            conv = await self.store.conversation(hello.conversation_id)
            if conv is None or conv["visitor_id"] != visitor.visitor_id or conv["site_key"] != site.site_key:
                raise frames.FrameError("forbidden", "this conversation belongs to someone else")
            cid = hello.conversation_id
        else:
            cid = await self.store.create_conversation(site.site_key, visitor.visitor_id)
        return site, visitor, cid, token or "", hello

    async def _join(self, hub: Hub, client: Client, site: Site, cid: str, token: str, hello: frames.Hello) -> None:
        locale = client.locale = locales.choose(site.widget.locale, hello.languages)
        # how the widget looks, the visitor's language and the site's hours
        site_frame = {**site.widget.to_frame(datetime.now(UTC)), "locale": locale, "strings": locales.strings(locale)}
        async with hub.lock:
            await hub.flush(self.store)
            # a new hub's seq was read before the lock: if a previous hub flushed frames since, go on after them
            conv = await self.store.conversation(cid)
            hub.seq = max(hub.seq, conv["last_seq"] if conv else 0)
            status = {"status": (conv or {}).get("status") or "bot", "agent": (conv or {}).get("agent")}  # who answers (v2)
            resumable = hello.conversation_id and hello.last_seq is not None and await self._resumable(hub, hello.last_seq)
            welcome = {"type": "welcome", "conversation_id": cid, "token": token, "site": site_frame, "answering": status}
            if resumable:
                last_seq = hello.last_seq or 0
                await client.send({**welcome, "history": [], "seq": last_seq, "reset": False})
                for frame in await self.store.frames_after(cid, last_seq):
                    await client.send(frame)
                client.seen = last_seq
            else:  # a fresh page, or a client ahead of what survived a crash: the whole history
                history = [m.to_frame() for m in await self.store.messages(cid)]
                await client.send({**welcome, "history": history, "seq": hub.seq, "reset": True})
            hub.clients.add(client)
            if self.live is not None and not hub.generating and hub.following is None and await self._made_elsewhere(cid):
                hub.following = asyncio.create_task(self._follow(hub))
                self.metrics.relayed.inc()

    async def _resumable(self, hub: Hub, last_seq: int) -> bool:
        """Whether a client that has frames up to `last_seq` can go on from there: the store has
        that frame, or another replica is still making the answer (sent, not yet stored: the relay
        skips what the client has). A client that saw frames a crash lost gets the whole history."""
        if last_seq <= hub.seq:
            return last_seq == 0 or await self.store.has_frame(hub.cid, last_seq)
        return self.live is not None and await self.live.answering_elsewhere(hub.cid)

    # --- frames --------------------------------------------------------------------------------------
    async def _message(self, hub: Hub, site: Site, visitor: Visitor, ip: str, client: Client, frame: frames.Message) -> None:
        text = frame.text.strip()
        if not text:
            raise frames.FrameError("empty_message", "The message is empty.")
        if len(frame.text) > self.config.max_message_chars:
            raise frames.FrameError("message_too_large", f"Messages can be at most {self.config.max_message_chars} characters.")
        ref = self.tokens.client_ref(hub.cid, frame.client_msg_id)
        # Lookup, check and claim under the lock, all of it: nothing of this conversation can slip in
        # between (another socket's message, or this one's retry racing its original).
        async with hub.lock:
            existing = await self.store.by_client_ref(hub.cid, ref)
            refused = None if existing is None or hub.generating else await self.store.refused_answer(hub.cid, existing.id)
            if existing is not None and refused is None:  # a retry of a message we have: acknowledge it again, answer it once
                await client.send(_ack(frame.client_msg_id, existing))
                return
            if hub.generating:
                raise frames.FrameError("busy", "Please wait for the answer to finish, or press stop.")
            await self._check_rate(visitor, ip)
            if not await self._claim(hub):
                raise frames.FrameError("busy", "Please wait for the answer to finish, or press stop.")
            started = hub.task
            try:
                await self._start_turn(hub, site, visitor, ip, client, frame, text, ref, existing, refused)
            finally:
                if hub.task is started:  # no answer or hold began: nothing holds the claim
                    await self._unclaim(hub)

    async def _start_turn(
        self,
        hub: Hub,
        site: Site,
        visitor: Visitor,
        ip: str,
        client: Client,
        frame: frames.Message,
        text: str,
        ref: str,
        existing: Message | None,
        refused: Message | None,
    ) -> None:
        """Store the visitor's message (or take up the refused one) and start its answer, or hold it
        for the people (the caller holds the lock and the conversation's claim)."""
        if existing is not None and refused is not None:  # the engine was too busy for it: answer it now, in the same answer
            user, answer = existing, refused
            await client.send(_ack(frame.client_msg_id, existing))
            hub.updates[answer.id] = {"text": "", "status": "streaming", "finish_reason": None, "replica": self.replica}
        else:
            try:  # kept empty until the gateway's one scan says what of it may be kept (see _generate)
                user = await self.store.add_message(hub.cid, "user", "", "done", hub.seq + 1, ref)
            except IntegrityError:  # the same client_ref already stored (only another process could have): a retry
                again = await self.store.by_client_ref(hub.cid, ref)
                if again is None:
                    raise
                await client.send(_ack(frame.client_msg_id, again))
                return
            ack = {"type": "ack", "client_msg_id": frame.client_msg_id, "message_id": user.id}
            await hub.emit(ack, stored={**ack, "client_msg_id": ref})  # live: the client's own id; kept and replayed: its hash
            now = datetime.now(UTC)
            held = await self._held_for_people(hub, site, visitor, text, now)
            if held is not None:
                await hub.flush(self.store)
                hub.answering = user.id  # until it is kept: one message at a time, as for an answer
                hub.task = asyncio.create_task(self._hold(hub, site, visitor, ip, user, frame.text, now, held))
                return
            answer = await self.store.add_message(hub.cid, "assistant", "", "streaming", hub.seq + 1, replica=self.replica)
        await hub.flush(self.store)
        hub.answering = answer.id
        hub.task = asyncio.create_task(self._generate(hub, site, visitor, ip, user, answer, frame.text, client.locale))

    async def _held_for_people(self, hub: Hub, site: Site, visitor: Visitor, text: str, now: datetime) -> str | None:
        """Why the bot does not answer this message, if it does not: `person` (a person is asked for
        or has the conversation, or these words ask for one: kept for them) or `away` (outside the
        site's hours, where the bot does not answer then). A closed conversation written to opens
        again, with the bot. The caller holds the lock."""
        conv = await self.store.conversation(hub.cid) or {}
        status = conv.get("status") or "bot"
        if status in ("waiting", "agent"):
            return "person"
        if status == "closed":
            await self._status(hub, site, "bot")
        if asks_for_person(text):
            return "ask"
        if not site.widget.bot_when_away and not site.widget.business_hours().is_open(now):
            return "away"
        return None

    async def _check_rate(self, visitor: Visitor, ip: str) -> None:
        for limiter, key in ((self.visitor_limit, visitor.visitor_id), (self.ip_limit, ip)):
            wait = await limiter.check(key)
            if wait is not None:
                raise frames.FrameError("rate_limited", f"You're sending messages too quickly. Please wait {wait} s.", retry_after=wait)

    async def _cancel(self, hub: Hub) -> None:
        if hub.generating and hub.task is not None:
            hub.task.cancel()
            with contextlib.suppress(BaseException):
                await hub.task  # type: ignore[misc]

    async def _generate(
        self, hub: Hub, site: Site, visitor: Visitor, ip: str, user: Message, answer: Message, text: str, locale: str
    ) -> None:
        """Answer `user`, whose raw `text` the gateway guards once: the store gets the text as the
        guard passed it (secrets and card numbers redacted), and the guard sees every template
        token and tripwire the visitor typed."""
        parts: list[str] = []
        thoughts: list[str] = []  # a reasoning model's thinking: stored apart, never sent to the visitor
        grounding: Grounding | None = None
        finish, error = "error", None  # type: str, frames.FrameError | None
        overloaded = False  # refused by the engine before a token: the client may send the message again
        gen = None
        try:
            earlier = [
                (m.role, m.text)
                for m in await self.store.messages(hub.cid)
                if m.id not in (user.id, answer.id) and m.text and m.status in ("done", "cancelled", "interrupted")
            ]
            previous = next((t for role, t in reversed(earlier) if role == "user"), None)
            window = self.gateway.model_for("support_chat").context_length
            # passages may take about a third of the window (at ~3 characters a token); the conversation needs the rest
            grounding = await ground(
                self.knowledge, site.site_key, site.system_prompt, text, previous, budget_chars=window, dense=site.retrieval != "bm25"
            )
            # the gateway guards the whole prompt once and drops the oldest turns the window cannot hold
            prompt = ChatPrompt((("system", grounding.system if grounding else site.system_prompt), *earlier, ("user", text)), fit=True)
            call = self._call(hub, site, visitor, ip, user, answer.id, prompt)
            if grounding is not None:
                words = locales.strings(locale)
                appendix = functools.partial(grounding.appendix, quote_label=words["from_documents"])
                call = dataclasses.replace(
                    call,
                    sources=grounding.refs,
                    reply=words["no_answer"] if grounding.unknown else None,
                    appendix=appendix if grounding.excerpt else None,
                )
            gen = self.gateway.stream(call)
            async for delta in gen:
                async with hub.lock:
                    if delta.reasoning:
                        if not thoughts and not parts:  # the widget says "thinking…" (only that it thinks)
                            await hub.emit({"type": "thinking", "message_id": answer.id})
                        thoughts.append(delta.reasoning)
                    if delta.text:
                        parts.append(delta.text)
                        await hub.emit({"type": "delta", "message_id": answer.id, "text": delta.text})
                        hub.updates[answer.id] = {"text": "".join(parts)}
                    if time.monotonic() - hub.last_flush >= self.config.flush_seconds:
                        await hub.flush(self.store)
                if delta.finish_reason:
                    finish = delta.finish_reason
        except asyncio.CancelledError:
            finish = "cancelled"
        except CallFailed as exc:
            row, error = said(exc)
            if row.blocked:
                finish = "blocked"
            overloaded = row.retry and not parts
            if not (row.blocked or row.retry):
                log.warning("dialog: generation failed in %s: %s", hub.cid, exc.code)
        except Exception:
            log.exception("dialog: generation failed in %s", hub.cid)
            error = frames.FrameError("error", PLAIN_WORDS["error"])
        finally:
            if gen is not None:
                with contextlib.suppress(BaseException):
                    await gen.aclose()  # type: ignore[attr-defined]
        status = {"stop": "done", "length": "done", "cancelled": "cancelled", "blocked": "blocked"}.get(finish, "error")
        async with hub.lock:
            hub.answering = None  # a client may send its next message the moment it sees `done`
            done: dict[str, Any] = {"type": "done", "message_id": answer.id, "finish_reason": finish}
            sources = grounding.sources if grounding is not None and parts and status == "done" else []
            if sources:
                done["sources"] = sources
            # stored before it is sent: a visitor who reconnects the moment they see it, through the
            # balancer to another replica, finds the conversation's seq past it
            done = await hub.emit(done, send=False)
            hub.updates[answer.id] = {"text": "".join(parts), "status": status, "finish_reason": "overloaded" if overloaded else finish}
            if thoughts:
                hub.updates[answer.id]["reasoning"] = "".join(thoughts)
            if sources:
                hub.updates[answer.id]["sources"] = json.dumps(sources, ensure_ascii=False)
            if finish == "blocked" and isinstance(error, frames.FrameError) and error.code == "message_blocked":
                hub.updates[user.id] = {**hub.updates.get(user.id, {}), "status": "blocked"}
            await hub.flush(self.store)
            await self._unclaim(hub)  # (before it is sent too: the visitor's next message may come through another replica)
            await hub.send(done)
            if status == "done":
                await self._published(hub, site, answer, "".join(parts), first=False)
            if error is not None:
                for client in list(hub.clients):
                    await client.send(error.frame())
        await self._unclaim(hub)
        await self.notify(hub.cid)
        self._release_later(hub)

    def _call(
        self,
        hub: Hub,
        site: Site,
        visitor: Visitor,
        ip: str,
        user: Message,
        request_id: str,
        prompt: ChatPrompt,
        generate: bool = True,
    ) -> Call:
        """The gateway call for a visitor's message; the store keeps the message as the guard passes it."""

        async def keep(screened: Screened) -> None:
            async with hub.lock:
                hub.updates[user.id] = {"text": screened.newest or ""}
                await hub.flush(self.store)
                await self._published(hub, site, user, screened.newest or "")
            await self.notify(hub.cid)  # consoles see the visitor's words before the answer to them

        return Call(
            "support_chat",
            Actor("widget_visitor", user=visitor.visitor_id, ip=ip, client="tandem-widget", tenant=site.site_key),
            prompt,
            Params(max_tokens=self.config.max_answer_tokens, temperature=self.config.temperature),
            Priority.CHAT,
            request_id=request_id,
            conversation_id=hub.cid,
            message_id=request_id,
            on_screened=keep,
            generate=generate,
        )

    async def _hold(self, hub: Hub, site: Site, visitor: Visitor, ip: str, user: Message, text: str, now: datetime, why: str) -> None:
        """A message the bot does not answer (see `_held_for_people`): guarded, kept and audited for
        a person; outside the hours the visitor is told when one will answer (an `away` frame), and
        words asking for a person ask for one."""
        error = None  # type: frames.FrameError | None
        try:
            prompt = ChatPrompt((("system", site.system_prompt), ("user", text)), fit=True)
            async for _ in self.gateway.stream(self._call(hub, site, visitor, ip, user, user.id, prompt, generate=False)):
                pass
        except CallFailed as exc:
            error = said(exc)[1]
        except Exception:
            log.exception("dialog: keeping a message failed in %s", hub.cid)
            error = frames.FrameError("error", PLAIN_WORDS["error"])
        async with hub.lock:
            hub.answering = None
            if why == "away":
                next_open = site.widget.business_hours().to_frame(now)["next_open"]
                await hub.emit({"type": "away", "message_id": user.id, "next_open": next_open})
            elif why == "ask" and error is None:
                await self.request_handoff(hub, site, visitor.visitor_id, "words")
            await hub.flush(self.store)
            if error is not None:
                for client in list(hub.clients):
                    await client.send(error.frame())
        await self._unclaim(hub)
        await self.notify(hub.cid)
        self._release_later(hub)

    async def _published(self, hub: Hub, site: Site, message: Message, text: str, first: bool | None = None) -> None:
        """A message, once stored, to the webhooks; the visitor's first one opens the conversation
        there. Called under the hub's lock, so a conversation's events keep their order."""
        if not text:
            return
        if first is None:
            first = message.role == "user" and await self.store.count_messages(hub.cid, "user") == 1
        if first:
            conv = await self.store.conversation(hub.cid) or {}
            contact = json.loads(conv["contact"]) if conv.get("contact") else None
            await self.event(site.site_key, "conversation.created", {"conversation_id": hub.cid, "contact": contact})
        item = {"id": message.id, "role": message.role, "text": text, "created_at": message.created_at}
        await self.event(site.site_key, "message.created", {"conversation_id": hub.cid, "message": item})

    async def _identify(self, hub: Hub, site: Site, client: Client, frame: frames.Identify) -> None:
        """The site's signed-in customer, attached to the conversation; a wrong signature is refused
        (and neither the secret nor the signature is ever logged, stored or echoed)."""
        try:
            contact = verify(site.identity_secret, frame.name, frame.email, frame.id, frame.hmac)
        except IdentityRefused as exc:
            raise frames.FrameError(exc.code, str(exc)) from None
        await self.store.set_contact(hub.cid, contact)
        await client.send(
            {"type": "identified", "name": contact.name, "email": contact.email, "id": contact.customer_id, "verified": contact.verified}
        )

    async def _claim(self, hub: Hub) -> bool:
        """This replica answers the conversation now (always, without Redis; over a dead replica's
        claim too). Its seq goes on after every frame stored since this hub last looked: another
        replica may have answered meanwhile."""
        if self.live is None:
            return True
        if not await self.live.claim(hub.cid) and not await self._take_over(hub):
            return False
        if hub.following is not None:
            hub.following.cancel()
        conv = await self.store.conversation(hub.cid)
        hub.seq = max(hub.seq, conv["last_seq"] if conv else 0)
        return True

    async def _dead_holder(self, cid: str) -> str | None:
        """The replica claiming `cid`, if its heartbeat stopped. Its claim in Redis, renewed at each
        flush, can outlive its last beat by a beat: its answer is marked interrupted (the store's
        judgement) while the claim still says it is answering. Without a shared store there is no
        heartbeat to judge by, and the claim lapses by itself."""
        if self.live is None or self.config.database_url is None:
            return None
        holder = await self.live.holder(cid)
        if holder is None or holder == self.replica or await self.store.alive(holder, self.config.lease_seconds):
            return None
        return holder

    async def _free_dead_claim(self, cid: str) -> None:
        holder = await self._dead_holder(cid)
        if holder is not None and self.live is not None:
            await self.live.release(cid, holder)

    async def _take_over(self, hub: Hub) -> bool:
        """Claim a conversation whose claim a dead replica left (the caller holds the hub's lock).
        Its cut answer is ended first, here as the watch would, and this hub's sockets get that
        end: the new answer's frames come after it, in the store and on the wire."""
        assert self.live is not None
        holder = await self._dead_holder(hub.cid)
        if holder is None:
            return False  # another replica, alive, is answering
        await self._interrupt_cut_answers()
        await self.live.release(hub.cid, holder)  # (if the sweep has not: a claim with no answer, a message kept for the people)
        if not await self.live.claim(hub.cid):
            return False
        await self._send_unseen(hub, await self.store.frames_after(hub.cid, hub.seq))
        return True

    async def _unclaim(self, hub: Hub) -> None:
        if self.live is not None:
            await self.live.release(hub.cid)

    async def _follow(self, hub: Hub) -> None:
        """Relay the answer another replica is making to this hub's sockets, each frame once. A
        relay that ends without the answer's `done` (Redis went away, or the answering replica died
        and its claim lapsed or was let go) goes on from the store until the answer ends there:
        finished by its replica, or marked interrupted by whichever replica noticed it was cut."""
        assert self.live is not None
        try:
            ended = False
            async for frame in self.live.follow(hub.cid, hub.seq):
                ended = await self._relay(hub, [frame])
            while not ended:
                ended = await self._relay(hub, await self.store.frames_after(hub.cid, hub.seq))
                if ended or not await self.store.streaming(hub.cid):
                    return
                await asyncio.sleep(1.0)  # (polling the store while that answer is cut, or Redis away)
        except asyncio.CancelledError:
            pass
        finally:
            hub.following = None

    async def _made_elsewhere(self, cid: str) -> bool:
        """Another replica is answering `cid`, or was and died (its claim lapsed, its answer not yet marked)."""
        assert self.live is not None
        return await self.live.answering_elsewhere(cid) or await self.store.streaming(cid)

    async def _relay(self, hub: Hub, made: list[dict[str, Any]]) -> bool:
        """Send what this hub's sockets have not had of `made`; whether it held the answer's `done`."""
        async with hub.lock:
            await self._send_unseen(hub, made)
        return any(frame["type"] == "done" for frame in made)

    @staticmethod
    async def _send_unseen(hub: Hub, made: list[dict[str, Any]]) -> None:
        """The frames of `made` past the hub's seq, to its sockets (the caller holds the hub's lock)."""
        for frame in made:
            if frame["seq"] > hub.seq:
                hub.seq = frame["seq"]
                await hub.send(frame)

    def _release_later(self, hub: Hub) -> None:
        asyncio.get_running_loop().call_soon(self._release, hub)


def _ack(client_msg_id: str, message: Message) -> dict[str, Any]:
    """The ack of a message already stored, again, to the client that sent it (its own id echoed)."""
    return {"type": "ack", "client_msg_id": client_msg_id, "message_id": message.id, "seq": message.seq}
