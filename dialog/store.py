"""The chat store: sites, conversations, messages and the frames sent, through SQLAlchemy's async
engine: in SQLite by default (aiosqlite, in WAL mode so support staff can read while it writes), or
in PostgreSQL by URL (asyncpg), which several replicas share. The same code and the same numbered
migrations serve both.

Answers are written while they stream: the service appends frames in small batches
(`append_frames`), each batch one transaction that also brings the message text up to date.

The files are the server user's alone (dialog/files.py), and a client's own id for a message is
kept only as the keyed hash the service makes of it (`client_ref`, see tokens.py).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Select, String, Table, Text, event, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from server.clock import iso_utc
from server.clock import utc_now as now

from .files import private_dir, private_sqlite
from .identity import Contact
from .migrations import migrate
from .shielded import shield_methods
from .widget_settings import DEFAULT as DEFAULT_WIDGET
from .widget_settings import WidgetSettings

meta = MetaData()
sites = Table(
    "sites",
    meta,
    Column("site_key", String, primary_key=True),
    Column("name", String),
    Column("allowed_origins", Text),
    Column("system_prompt", Text),
    Column("created_at", String),
    Column("widget", Text),
    Column("identity_secret", String),
    Column("retrieval", String),
)
conversations = Table(
    "conversations",
    meta,
    Column("id", String, primary_key=True),
    Column("site_key", String),
    Column("visitor_id", String),
    Column("created_at", String),
    Column("updated_at", String),
    Column("last_seq", Integer),
    Column("contact", Text),
    Column("status", String),
    Column("agent", String),
    Column("rating", Integer),
    Column("handoff_at", String),
)
# messages.client_msg_id holds raw ids only in rows from before m003, until the service scrubs them; client_ref is what is kept
messages = Table(
    "messages",
    meta,
    Column("id", String, primary_key=True),
    Column("conversation_id", String),
    Column("role", String),
    Column("text", Text),
    Column("status", String),
    Column("client_msg_id", String),
    Column("created_at", String),
    Column("updated_at", String),
    Column("finish_reason", String),
    Column("seq", Integer),
    Column("client_ref", String),
    Column("sources", Text),
    Column("author", String),
    Column("rating", String),
    Column("replica", String),  # the replica streaming it (m008)
    Column("reasoning", Text),  # a reasoning model's thinking before the answer, never shown to the visitor (m009)
)

replicas = Table("dialog_replicas", meta, Column("replica", String, primary_key=True), Column("seen_at", String))
events = Table(
    "events", meta, Column("conversation_id", String, primary_key=True), Column("seq", Integer, primary_key=True), Column("frame", Text)
)


SEQ_GAP_AFTER_CRASH = 1000  # far more frames than a 100 ms flush interval can leave unsaved


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Site:
    site_key: str
    name: str
    allowed_origins: tuple[str, ...]
    system_prompt: str
    widget: WidgetSettings = DEFAULT_WIDGET
    identity_secret: str | None = field(default=None, repr=False)  # signs identified customers (identity.py)
    retrieval: str = "hybrid"  # the knowledge base's: hybrid (BM25 and dense, when the embedding model is installed) | bm25

    def allows(self, origin: str | None) -> bool:
        """Exact origins, or `scheme://host:*` for any port."""
        if origin is None:
            return False
        for allowed in self.allowed_origins:
            if allowed == origin or allowed == "*":
                return True
            if allowed.endswith(":*") and origin.startswith(allowed[:-1]) and origin[len(allowed) - 1 :].isdigit():
                return True
        return False


@dataclass(frozen=True)
class Message:
    id: str
    conversation_id: str
    role: str
    text: str
    status: str
    client_ref: str | None  # the keyed hash of the client's client_msg_id (user messages)
    created_at: str
    finish_reason: str | None
    seq: int | None
    sources: str | None = None  # JSON: the knowledge an answer was grounded in
    author: str | None = None  # an agent's name (role "agent")
    rating: str | None = None  # the visitor's thumbs on an answer: up | down
    replica: str | None = None  # the replica that streamed it (a store replicas share)
    reasoning: str | None = None  # a reasoning model's thinking (as the output guard passed it): never in a frame

    def to_frame(self) -> dict[str, Any]:
        frame = {"message_id": self.id, "role": self.role, "text": self.text, "status": self.status, "created_at": self.created_at}
        if self.sources:
            frame["sources"] = json.loads(self.sources)
        if self.author:
            frame["author"] = self.author
        if self.rating:
            frame["rating"] = self.rating
        return frame


@shield_methods
class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, location: Path | str, client_ref: Callable[[str, str], str] | None = None) -> Store:
        """`location` is the SQLite file, or a `postgresql+asyncpg://` URL. `client_ref(conversation_id,
        client_msg_id)` is the service's keyed hash: given, any raw client ids left by a release
        before m003 are replaced by it (the CLI opens without it)."""
        engine = postgres_engine(location) if isinstance(location, str) else sqlite_engine(location)
        async with engine.begin() as conn:
            await conn.run_sync(migrate)
        store = cls(engine)
        if client_ref is not None:
            await store._scrub_raw_client_ids(client_ref)
        return store

    async def _scrub_raw_client_ids(self, client_ref: Callable[[str, str], str]) -> int:
        """Rows from before m003 kept the client's id raw, in the message and in its ack frame."""
        async with self.engine.begin() as conn:
            rows = list(
                await conn.execute(
                    select(messages.c.id, messages.c.conversation_id, messages.c.client_msg_id).where(messages.c.client_msg_id.is_not(None))
                )
            )
            for mid, cid, raw in rows:
                ref = client_ref(cid, raw)
                await conn.execute(update(messages).where(messages.c.id == mid).values(client_ref=ref, client_msg_id=None))
                acks = await conn.execute(
                    select(events.c.seq, events.c.frame).where(events.c.conversation_id == cid, events.c.frame.contains(mid))
                )
                for seq, text in list(acks):
                    frame = json.loads(text)
                    if frame.get("type") == "ack" and frame.get("message_id") == mid:
                        await conn.execute(
                            update(events)
                            .where(events.c.conversation_id == cid, events.c.seq == seq)
                            .values(frame=json.dumps({**frame, "client_msg_id": ref}, ensure_ascii=False))
                        )
        if rows and self.engine.dialect.name == "sqlite":  # and the old pages leave the write-ahead log too
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(rows)

    async def close(self) -> None:
        await self.engine.dispose()

    # --- sites ---------------------------------------------------------------------------------
    async def put_site(self, site: Site) -> None:
        async with self.engine.begin() as conn:
            exists = (await conn.execute(select(sites.c.site_key).where(sites.c.site_key == site.site_key))).first()
            values = {
                "name": site.name,
                "allowed_origins": json.dumps(list(site.allowed_origins)),
                "system_prompt": site.system_prompt,
                "widget": site.widget.to_json(),
                "identity_secret": site.identity_secret,
                "retrieval": site.retrieval,
            }
            if exists:
                await conn.execute(update(sites).where(sites.c.site_key == site.site_key).values(**values))
            else:
                await conn.execute(sites.insert().values(site_key=site.site_key, created_at=now(), **values))

    async def site(self, site_key: str) -> Site | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(sites).where(sites.c.site_key == site_key))).first()
        return _site(row) if row else None

    async def list_sites(self) -> list[Site]:
        async with self.engine.connect() as conn:
            return [_site(r) for r in await conn.execute(select(sites).order_by(sites.c.created_at))]

    # --- conversations -------------------------------------------------------------------------
    async def create_conversation(self, site_key: str, visitor_id: str) -> str:
        cid = new_id("conv")
        async with self.engine.begin() as conn:
            await conn.execute(
                conversations.insert().values(
                    id=cid, site_key=site_key, visitor_id=visitor_id, created_at=now(), updated_at=now(), last_seq=0
                )
            )
        return cid

    async def conversation(self, cid: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(conversations).where(conversations.c.id == cid))).first()
        return dict(row._mapping) if row else None

    async def set_contact(self, cid: str, contact: Contact) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(conversations).where(conversations.c.id == cid).values(contact=contact.to_json(), updated_at=now()))

    async def set_status(self, cid: str, status: str, agent: str | None = None) -> None:
        """Who answers the conversation now: the bot, a person it waits for, an agent, or nobody (closed)."""
        values: dict[str, Any] = {"status": status, "agent": agent, "updated_at": now()}
        if status == "waiting":
            values["handoff_at"] = now()
        async with self.engine.begin() as conn:
            await conn.execute(update(conversations).where(conversations.c.id == cid).values(**values))

    async def rate_answer(self, cid: str, message_id: str, value: str) -> tuple[bool, str | None]:
        """The visitor's thumbs on one of this conversation's answers: (found, the rating it had)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(messages.c.rating).where(
                        messages.c.id == message_id, messages.c.conversation_id == cid, messages.c.role.in_(("assistant", "agent"))
                    )
                )
            ).first()
            if row is None:
                return False, None
            await conn.execute(update(messages).where(messages.c.id == message_id).values(rating=value))
            return True, row.rating

    async def rate_conversation(self, cid: str, score: int) -> int | None:
        """The visitor's 1-5 for the whole conversation; returns the score it had."""
        async with self.engine.begin() as conn:
            before = (await conn.execute(select(conversations.c.rating).where(conversations.c.id == cid))).scalar_one_or_none()
            await conn.execute(update(conversations).where(conversations.c.id == cid).values(rating=score, updated_at=now()))
            return before

    async def list_conversations(
        self, site_key: str | None = None, limit: int = 100, site_keys: tuple[str, ...] | None = None, conversation_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest first, each with its message count and its last message (`last`, `last_role`)."""
        count = select(func.count()).where(messages.c.conversation_id == conversations.c.id).scalar_subquery()
        newest = (
            select(messages.c.text, messages.c.role)
            .where(messages.c.conversation_id == conversations.c.id, messages.c.text != "")
            .order_by(literal_column("messages.rowid").desc())
            .limit(1)
        )
        query = select(
            conversations,
            count.label("messages"),
            newest.with_only_columns(messages.c.text).scalar_subquery().label("last"),
            newest.with_only_columns(messages.c.role).scalar_subquery().label("last_role"),
        )
        query = query.order_by(conversations.c.updated_at.desc()).limit(limit)
        if site_key:
            query = query.where(conversations.c.site_key == site_key)
        if site_keys is not None:
            query = query.where(conversations.c.site_key.in_(site_keys))
        if conversation_id is not None:
            query = query.where(conversations.c.id == conversation_id)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    # --- messages and frames -------------------------------------------------------------------
    async def messages(self, cid: str) -> list[Message]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(messages).where(messages.c.conversation_id == cid).order_by(literal_column("messages.rowid")))
            return [_message(r) for r in rows]

    async def streaming(self, cid: str) -> bool:
        """Whether an answer of the conversation is still being made (or was cut and not yet marked)."""
        query = select(messages.c.id).where(messages.c.conversation_id == cid, messages.c.status == "streaming").limit(1)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def count_messages(self, cid: str, role: str) -> int:
        async with self.engine.connect() as conn:
            query = select(func.count()).where(messages.c.conversation_id == cid, messages.c.role == role)
            return int((await conn.execute(query)).scalar_one())

    async def by_client_ref(self, cid: str, client_ref: str) -> Message | None:
        async with self.engine.connect() as conn:
            query = select(messages).where(messages.c.conversation_id == cid, messages.c.client_ref == client_ref)
            row = (await conn.execute(query)).first()
        return _message(row) if row else None

    async def add_message(
        self,
        cid: str,
        role: str,
        text: str,
        status: str,
        seq: int,
        client_ref: str | None = None,
        author: str | None = None,
        replica: str | None = None,
    ) -> Message:
        msg = Message(new_id("msg"), cid, role, text, status, client_ref, now(), None, seq, author=author)
        async with self.engine.begin() as conn:
            await conn.execute(
                messages.insert().values(
                    id=msg.id,
                    conversation_id=cid,
                    role=role,
                    text=text,
                    status=status,
                    seq=seq,
                    client_ref=client_ref,
                    author=author,
                    replica=replica,
                    created_at=msg.created_at,
                    updated_at=msg.created_at,
                )
            )
        return msg

    async def refused_answer(self, cid: str, user_id: str) -> Message | None:
        """The answer to `user_id` if the engine refused it for load (finish_reason `overloaded`, no
        text) and it is still the conversation's last message: such a message may be sent again."""
        async with self.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    select(messages).where(messages.c.conversation_id == cid).order_by(literal_column("messages.rowid").desc()).limit(2)
                )
            )
        if len(rows) < 2 or rows[1].id != user_id:
            return None
        last = rows[0]
        return _message(last) if last.role == "assistant" and last.finish_reason == "overloaded" and not last.text else None

    async def append_frames(self, cid: str, frames: list[dict[str, Any]], message_updates: dict[str, dict[str, Any]]) -> None:
        """One batch in one transaction: the frames sent, the conversation's last seq, and each
        touched message's text/status so far."""
        async with self.engine.begin() as conn:
            if frames:
                await conn.execute(
                    events.insert(), [{"conversation_id": cid, "seq": f["seq"], "frame": json.dumps(f, ensure_ascii=False)} for f in frames]
                )
                await conn.execute(
                    update(conversations).where(conversations.c.id == cid).values(last_seq=frames[-1]["seq"], updated_at=now())
                )
            for mid, values in message_updates.items():
                await conn.execute(update(messages).where(messages.c.id == mid).values(updated_at=now(), **values))

    async def frames_after(self, cid: str, seq: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(events.c.frame).where(events.c.conversation_id == cid, events.c.seq > seq).order_by(events.c.seq)
            )
            return [json.loads(r.frame) for r in rows]

    async def has_frame(self, cid: str, seq: int) -> bool:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(select(events.c.seq).where(events.c.conversation_id == cid, events.c.seq == seq))
            ).first() is not None

    async def heartbeat(self, replica: str) -> None:
        """The replica `replica` is alive (on a store several share)."""
        async with self.engine.begin() as conn:
            await conn.execute(replicas.delete().where(replicas.c.replica == replica))
            await conn.execute(replicas.insert().values(replica=replica, seen_at=now()))

    async def alive(self, replica: str, lease_seconds: float) -> bool:
        """Whether `replica` beat within the lease (a replica that stopped cleanly is forgotten: not alive)."""
        query = _alive(lease_seconds).where(replicas.c.replica == replica)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def forget_replica(self, replica: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(replicas.delete().where(replicas.c.replica == replica))

    async def interrupt_streaming(self, replica: str | None = None, lease_seconds: float | None = None) -> list[tuple[str, str]]:
        """Answers left `streaming` by a crash become `interrupted`, each with a closing `done` frame
        so a client that resumes learns how it ended. The seq jumps past any frame that was sent but
        not yet saved, so no seq a client has seen is ever given to another frame. Without a lease
        (a store of one server's own, at its start-up) every such answer was cut; with one (a store
        replicas share), only those of replicas other than `replica` whose heartbeat is older than it."""
        streaming = select(messages.c.id, messages.c.conversation_id).where(messages.c.status == "streaming")
        if lease_seconds is not None:
            alive = _alive(lease_seconds)
            streaming = streaming.where(
                messages.c.replica.is_distinct_from(replica), or_(messages.c.replica.is_(None), messages.c.replica.not_in(alive))
            )
        cut = []
        async with self.engine.begin() as conn:
            for mid, cid in list(await conn.execute(streaming)):
                # Each step is one statement that locks what it changes: another replica sweeping at
                # the same moment waits on the message's row, then finds it ended and leaves it.
                ending = update(messages).where(messages.c.id == mid, messages.c.status == "streaming")
                marked = await conn.execute(ending.values(status="interrupted", finish_reason="interrupted", updated_at=now()))
                if marked.rowcount != 1:
                    continue
                seq = (
                    await conn.execute(
                        update(conversations)
                        .where(conversations.c.id == cid)
                        .values(last_seq=conversations.c.last_seq + SEQ_GAP_AFTER_CRASH)
                        .returning(conversations.c.last_seq)
                    )
                ).scalar_one()
                frame = {"type": "done", "message_id": mid, "seq": seq, "finish_reason": "interrupted"}
                await conn.execute(events.insert().values(conversation_id=cid, seq=seq, frame=json.dumps(frame)))
                cut.append((cid, mid))
        return cut


def _alive(lease_seconds: float) -> Select[tuple[str]]:
    """The replicas whose heartbeat is younger than the lease."""
    return select(replicas.c.replica).where(replicas.c.seen_at > iso_utc(time.time() - lease_seconds))


def sqlite_engine(path: Path) -> AsyncEngine:
    private_dir(path.parent)
    private_sqlite(path)
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi: Any, _record: Any) -> None:
        cur = dbapi.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses no committed batch, power loss at most the last
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")  # a loaded machine can hold the write lock for seconds
        cur.execute("PRAGMA secure_delete=ON")  # what is replaced or deleted is overwritten, not left in free space
        cur.close()

    return engine


def postgres_engine(url: str) -> AsyncEngine:
    if not url.startswith("postgresql+asyncpg://"):
        raise ValueError("a database URL must be postgresql+asyncpg://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _site(row: Any) -> Site:
    return Site(
        row.site_key,
        row.name,
        tuple(json.loads(row.allowed_origins)),
        row.system_prompt,
        WidgetSettings.from_json(row.widget),
        row.identity_secret,
        row.retrieval,
    )


def _message(row: Any) -> Message:
    return Message(
        row.id,
        row.conversation_id,
        row.role,
        row.text,
        row.status,
        row.client_ref,
        row.created_at,
        row.finish_reason,
        row.seq,
        row.sources,
        row.author,
        row.rating,
        row.replica,
        row.reasoning,
    )
