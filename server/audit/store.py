"""The audit database: its own SQLite file, or a PostgreSQL database a fleet of replicas shares;
append-only by trigger on both; read and written through SQLAlchemy.

Its schema is built and brought forward by numbered migrations (`migrations.py`); the tables here
describe it for queries. `audit_records` holds the sealed envelopes and the chain; the envelope
fields declared indexed in `record.py` are copied into columns for the review filters
(verification checks they still agree).
`audit_content` holds the redacted prompt and output apart from the chain, so a retention policy
can delete them (only once expired: a trigger refuses earlier deletes) without breaking it: the
envelope holds their HMACs. `audit_checkpoints` holds the signed chain heads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, Text, create_engine, event, select

from ..clock import utc_now
from . import merkle, migrations
from .chain import GENESIS, canonical, record_hash, ulid
from .record import INDEXED, indexed_values

metadata = MetaData()

records = Table(
    "audit_records",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    *(Column(column, String) for column in INDEXED),  # copied out of the envelope (record.py says which fields)
    Column("envelope", Text, nullable=False),  # canonical JSON: what the hash covers
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

contents = Table(
    "audit_content",
    metadata,
    Column("record_id", String, primary_key=True),
    Column("prompt", Text),
    Column("output", Text),
    Column("expires_at", String, nullable=False),
)

checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),  # the last record it covers
    Column("ts", String, nullable=False),
    Column("head", String(64), nullable=False),
    Column("prev_sig", String, nullable=False),
    Column("key_id", String, nullable=False),
    Column("sig", String, nullable=False),
)

# The journal of calls in progress: a row per call from its start until its record is sealed (in
# the same transaction), so a call cut by a crash is found at the next start and gets its record.
pending = Table(
    "audit_pending",
    metadata,
    Column("call", String, primary_key=True),
    Column("body", Text, nullable=False),  # the call's skeleton envelope (canonical JSON): identity, actor refs, model
    Column("replica", String),  # the writer that journalled it (m003)
)

# Each writer's heartbeat on a shared (PostgreSQL) log: a call journalled by a writer whose
# heartbeat has stopped was cut by that replica's death, and any other replica records it.
replicas = Table(
    "audit_replicas",
    metadata,
    Column("replica", String, primary_key=True),
    Column("seen_at", String, nullable=False),
)


# Every writer's transaction on PostgreSQL starts by taking this lock (held to its commit), so the
# replicas append to one chain in turn: each reads the head the last one committed (READ COMMITTED)
# and seals seq + 1 onto it. No sequence: a sequence's gaps would read as deleted records.
CHAIN_LOCK = "SELECT pg_advisory_xact_lock(7215464401)"


def open_db(location: Path | str, writer: bool = False) -> Engine:
    """A SQLAlchemy engine on the audit file, or on PostgreSQL by URL (postgresql+psycopg://…). The
    writer's transactions take turns on the chain head: BEGIN IMMEDIATE on SQLite (the server and a
    CLI command appending at once), the chain's advisory lock on PostgreSQL (every replica)."""
    if isinstance(location, str):
        return _postgres(location, writer)
    path = location
    if writer:  # only the operator reads the log: a 0700 folder, a 0600 file (SQLite gives -wal/-shm the file's mode)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None  # SQLAlchemy's documented pysqlite recipe: we issue BEGIN ourselves
        cur = dbapi.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # an audit record is durable once committed
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    if writer:
        with engine.begin() as conn:
            migrations.migrate(conn)
    return engine


def _postgres(url: str, writer: bool) -> Engine:
    if not url.startswith("postgresql+psycopg://"):
        raise ValueError("an audit database URL must be postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    engine = create_engine(url, pool_pre_ping=True)
    if writer:

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql(CHAIN_LOCK)

        with engine.begin() as conn:
            migrations.migrate(conn)
    return engine


def head(conn: Any) -> tuple[int, str]:
    row = conn.execute(records.select().with_only_columns(records.c.seq, records.c.hash).order_by(records.c.seq.desc()).limit(1)).first()
    return (row.seq, row.hash) if row else (0, GENESIS)


def append(conn: Any, body: dict[str, Any], content: dict[str, Any] | None, expires_at: str | None) -> dict[str, Any]:
    """Seal one record onto the chain inside the caller's (IMMEDIATE) transaction."""
    seq, prev = head(conn)
    envelope = {"v": 1, **body, "seq": seq + 1, "id": ulid(), "ts": utc_now()}
    if content is not None and expires_at is not None:
        envelope["content_until"] = expires_at  # so verification can tell content deleted early from content expired
    sealed = canonical(envelope)
    digest = record_hash(prev, sealed)
    row = indexed_values(envelope)
    conn.execute(records.insert().values(seq=seq + 1, envelope=sealed.decode("utf-8"), prev_hash=prev, hash=digest, **row))
    if content is not None and expires_at is not None:
        conn.execute(contents.insert().values(record_id=envelope["id"], expires_at=expires_at, **content))
    return {**envelope, "hash": digest, "prev_hash": prev, "leaf_hash": merkle.leaf_hash(sealed).hex()}


def leaves(conn: Any, upto: int | None = None, after: int = 0) -> list[bytes]:
    """The Merkle leaf hashes of the records in order (those after seq `after`, the first `upto` of them)."""
    query = select(records.c.envelope).where(records.c.seq > after).order_by(records.c.seq)
    if upto is not None:
        query = query.limit(upto)
    return [merkle.leaf_hash(row.envelope.encode("utf-8")) for row in conn.execute(query)]


def expire_content(conn: Any) -> int:
    result = conn.execute(contents.delete().where(contents.c.expires_at <= utc_now()))
    return int(result.rowcount or 0)
