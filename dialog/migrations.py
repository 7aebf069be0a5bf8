"""The chat store's numbered schema migrations (the runner is `server/migrations.py`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from server.migrations import Migrations, postgres

migration = Migrations()
MIGRATIONS = migration.steps


def _rowid(conn: Any) -> str:
    """PostgreSQL has no implicit rowid; the store orders some tables by insertion with one of its own."""
    return ",\n            rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE" if postgres(conn) else ""


@migration
def m001_initial(conn: Any) -> None:
    conn.execute(
        text("""
        CREATE TABLE sites (
            site_key TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            allowed_origins TEXT NOT NULL,          -- JSON list
            system_prompt TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""")
    )
    conn.execute(
        text("""
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            site_key TEXT NOT NULL REFERENCES sites(site_key),
            visitor_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""")
    )
    conn.execute(text("CREATE INDEX ix_conversations_visitor ON conversations(visitor_id, updated_at)"))
    conn.execute(
        text(f"""
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            role TEXT NOT NULL,                     -- user | assistant
            text TEXT NOT NULL,
            status TEXT NOT NULL,                   -- streaming | done | cancelled | interrupted | blocked | error
            client_msg_id TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL{_rowid(conn)}
        )""")
    )
    conn.execute(text("CREATE INDEX ix_messages_conversation ON messages(conversation_id, created_at)"))
    conn.execute(
        text("CREATE UNIQUE INDEX ux_messages_client_msg ON messages(conversation_id, client_msg_id) WHERE client_msg_id IS NOT NULL")
    )


@migration
def m002_events_and_seq(conn: Any) -> None:
    """Resume needs every frame a client was sent, in order: one row per ack, delta and done."""
    conn.execute(text("ALTER TABLE conversations ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE messages ADD COLUMN finish_reason TEXT"))
    conn.execute(text("ALTER TABLE messages ADD COLUMN seq INTEGER"))  # the seq of the message's ack (user) or first frame (assistant)
    conn.execute(
        text("""
        CREATE TABLE events (
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            seq INTEGER NOT NULL,
            frame TEXT NOT NULL,                    -- the server frame as sent (JSON)
            PRIMARY KEY (conversation_id, seq)
        )""")
    )


@migration
def m003_client_refs(conn: Any) -> None:
    """A client's message id is kept only as a keyed hash, `client_ref` (see tokens.py): the id is
    the client's to choose and may hold anything, a secret included. The raw ids of older rows, in
    `messages.client_msg_id` and in their stored `ack` frames, are replaced when the service first
    opens the store with its key (`Store.open`); the column stays, empty, for those rows."""
    conn.execute(text("ALTER TABLE messages ADD COLUMN client_ref TEXT"))
    conn.execute(text("DROP INDEX ux_messages_client_msg"))
    conn.execute(text("CREATE UNIQUE INDEX ux_messages_client_ref ON messages(conversation_id, client_ref) WHERE client_ref IS NOT NULL"))


@migration
def m004_site_widget_and_contacts(conn: Any) -> None:
    """A site's widget settings (appearance, language, business hours: JSON, see widget_settings.py)
    and its identity secret; a conversation's customer, once the site has identified them."""
    conn.execute(text("ALTER TABLE sites ADD COLUMN widget TEXT NOT NULL DEFAULT '{}'"))
    conn.execute(text("ALTER TABLE sites ADD COLUMN identity_secret TEXT"))
    conn.execute(text("ALTER TABLE conversations ADD COLUMN contact TEXT"))  # JSON, see identity.py


@migration
def m005_knowledge(conn: Any) -> None:
    """A site's knowledge base (dialog/knowledge): its documents (their sections as read and
    redacted, JSON, so the index can be rebuilt without the files), their passages, and a full-text
    index of the passages (SQLite FTS5: BM25 ranking, Porter stemming); and an answer's sources."""
    conn.execute(
        text("""
        CREATE TABLE knowledge_documents (
            id TEXT PRIMARY KEY,
            site_key TEXT NOT NULL REFERENCES sites(site_key),
            source TEXT NOT NULL,                   -- the name it was added under
            title TEXT NOT NULL,
            format TEXT NOT NULL,                   -- markdown | html | text | pdf
            sha256 TEXT NOT NULL,                   -- of the file as added: an unchanged file is not read again
            sections TEXT NOT NULL,                 -- JSON [[headings], text], redacted
            redactions INTEGER NOT NULL,
            added_at TEXT NOT NULL,
            UNIQUE (site_key, source)
        )""")
    )
    conn.execute(
        text("""
        CREATE TABLE knowledge_passages (
            id TEXT PRIMARY KEY,
            document_id TEXT NOT NULL REFERENCES knowledge_documents(id) ON DELETE CASCADE,
            site_key TEXT NOT NULL,
            ordinal INTEGER NOT NULL,
            heading TEXT NOT NULL,
            text TEXT NOT NULL
        )""")
    )
    conn.execute(text("CREATE INDEX ix_knowledge_passages_document ON knowledge_passages(document_id, ordinal)"))
    conn.execute(text("ALTER TABLE messages ADD COLUMN sources TEXT"))  # JSON: the passages' titles an answer was grounded in
    if postgres(conn):  # PostgreSQL's full-text search: the same columns, a weighted tsvector (English stemming) and its GIN index
        conn.execute(
            text("""
            CREATE TABLE knowledge_fts (
                title TEXT NOT NULL,
                heading TEXT NOT NULL,
                text TEXT NOT NULL,
                site_key TEXT NOT NULL,
                passage_id TEXT PRIMARY KEY,
                source TEXT NOT NULL,
                document tsvector GENERATED ALWAYS AS (
                    setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', heading), 'B')
                    || setweight(to_tsvector('english', text), 'D')
                ) STORED
            )""")
        )
        conn.execute(text("CREATE INDEX ix_knowledge_fts_document ON knowledge_fts USING GIN (document)"))
        conn.execute(text("CREATE INDEX ix_knowledge_fts_site ON knowledge_fts (site_key)"))
    else:
        conn.execute(
            text(
                "CREATE VIRTUAL TABLE knowledge_fts USING fts5(title, heading, text, site_key UNINDEXED, passage_id UNINDEXED,"
                " source UNINDEXED, tokenize = 'porter unicode61 remove_diacritics 2')"
            )
        )


@migration
def m006_dense_retrieval(conn: Any) -> None:
    """Each passage's sentence vector for dense retrieval (dialog/knowledge/embeddings.py: float32,
    unit length, made on first search where missing), and which retrieval a site's answers use."""
    conn.execute(
        text(f"""
        CREATE TABLE knowledge_vectors (
            passage_id TEXT PRIMARY KEY REFERENCES knowledge_passages(id) ON DELETE CASCADE,
            site_key TEXT NOT NULL,
            model TEXT NOT NULL,                    -- the embedding model that made it
            vector {"BYTEA" if postgres(conn) else "BLOB"} NOT NULL
        )""")
    )
    conn.execute(text("CREATE INDEX ix_knowledge_vectors_site ON knowledge_vectors(site_key)"))
    conn.execute(text("ALTER TABLE sites ADD COLUMN retrieval TEXT NOT NULL DEFAULT 'hybrid'"))  # hybrid | bm25


@migration
def m007_people_in_the_loop(conn: Any) -> None:
    """Staff and their tokens (hashed), who answers a conversation (the bot, a person it waits for,
    an agent, nobody once closed), agents' messages, the visitor's ratings, and the site's signed
    webhooks with their delivery log (an outbox: an event is written before it is sent, so a
    restart loses none)."""
    conn.execute(text("ALTER TABLE conversations ADD COLUMN status TEXT NOT NULL DEFAULT 'bot'"))  # bot | waiting | agent | closed
    conn.execute(text("ALTER TABLE conversations ADD COLUMN agent TEXT"))  # the staff member's name while one has it
    conn.execute(text("ALTER TABLE conversations ADD COLUMN rating INTEGER"))  # the visitor's 1-5 for the whole conversation
    conn.execute(text("ALTER TABLE conversations ADD COLUMN handoff_at TEXT"))  # when a person was last asked for
    conn.execute(text("ALTER TABLE messages ADD COLUMN author TEXT"))  # an agent's name (role 'agent')
    conn.execute(text("ALTER TABLE messages ADD COLUMN rating TEXT"))  # up | down, the visitor's thumbs on an answer
    conn.execute(
        text("""
        CREATE TABLE staff (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            token_sha256 TEXT NOT NULL UNIQUE,      -- the token itself is shown once and never kept
            sites TEXT NOT NULL,                    -- JSON list of site keys, or ["*"]
            created_at TEXT NOT NULL
        )""")
    )
    conn.execute(
        text(f"""
        CREATE TABLE webhooks (
            id TEXT PRIMARY KEY,
            site_key TEXT NOT NULL REFERENCES sites(site_key),
            url TEXT NOT NULL,
            secret TEXT NOT NULL,                   -- signs what is sent, and verifies inbound agent replies
            events TEXT NOT NULL,                   -- JSON list, or ["*"]
            created_at TEXT NOT NULL{_rowid(conn)}
        )""")
    )
    conn.execute(
        text(f"""
        CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,                    -- the event's id, sent with it: a receiver drops one it has seen
            webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
            event TEXT NOT NULL,
            body TEXT NOT NULL,                     -- JSON, exactly the bytes signed and sent
            status TEXT NOT NULL,                   -- pending | delivered | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {"DOUBLE PRECISION" if postgres(conn) else "REAL"} NOT NULL,  -- unix time
            last_code INTEGER,                      -- the receiver's last HTTP status
            last_error TEXT,
            created_at TEXT NOT NULL,
            delivered_at TEXT{_rowid(conn)}
        )""")
    )
    conn.execute(text("CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at)"))


@migration
def m008_replicas(conn: Any) -> None:
    """Several replicas on one (PostgreSQL) store: an answer streaming names the replica writing it,
    and each replica keeps a heartbeat, so the answers of one that dies are marked interrupted by
    another (on a store of its own, a server marks every one at start-up, as before)."""
    conn.execute(text("ALTER TABLE messages ADD COLUMN replica TEXT"))
    conn.execute(
        text("""
        CREATE TABLE dialog_replicas (
            replica TEXT PRIMARY KEY,
            seen_at TEXT NOT NULL                   -- its last heartbeat (ISO time, UTC)
        )""")
    )


@migration
def m009_reasoning(conn: Any) -> None:
    """A reasoning model's thinking, kept apart from the answer the visitor reads."""
    conn.execute(text("ALTER TABLE messages ADD COLUMN reasoning TEXT"))


def migrate(conn: Any, upto: int | None = None) -> list[str]:
    """Bring the chat store forward (up to step `upto`, for tests of older schemas); returns the steps applied."""
    return migration.migrate(conn, upto)
