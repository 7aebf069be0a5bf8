"""The audit database's numbered schema migrations (the runner is `server/migrations.py`).

A log written before these existed (schema version 1 or 2 in `PRAGMA user_version`, no
`_migrations` table) is adopted: the steps its version already has are marked applied, and the
rest run. The steps only add; no record, checkpoint or content row is ever rewritten, so a log
verifies the same before and after.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from ..migrations import Migrations, postgres

migration = Migrations()

NOW = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

# PostgreSQL's triggers call a function: this one refuses with the message the trigger gives it
_REFUSE = """
CREATE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0];
END $$"""
_EXPIRE_ONLY = """
CREATE FUNCTION audit_content_expire_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF CAST(OLD.expires_at AS timestamptz) > now() THEN
        RAISE EXCEPTION 'audit content can only be deleted once it has expired';
    END IF;
    RETURN OLD;
END $$"""


def _refuse(conn: Any, table: str, verb: str, message: str) -> None:
    """A trigger that refuses `verb` on `table` whoever asks (the application's role included)."""
    if postgres(conn):
        each = "STATEMENT" if verb == "truncate" else "ROW"
        conn.execute(
            text(
                f"CREATE TRIGGER {table}_no_{verb} BEFORE {verb.upper()} ON {table} FOR EACH {each} EXECUTE FUNCTION audit_refuse('{message}')"
            )
        )
    elif verb != "truncate":  # (SQLite has no TRUNCATE: its DELETE trigger covers it)
        conn.execute(text(f"CREATE TRIGGER {table}_no_{verb} BEFORE {verb.upper()} ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END"))


@migration
def m001_records_content_checkpoints(conn: Any) -> None:
    conn.execute(
        text(f"""
        CREATE TABLE audit_records (
            seq {"BIGINT" if postgres(conn) else "INTEGER"} NOT NULL PRIMARY KEY,
            id VARCHAR NOT NULL UNIQUE,
            ts VARCHAR NOT NULL,
            type VARCHAR NOT NULL,
            surface VARCHAR,
            actor_ref VARCHAR,
            conversation_id VARCHAR,
            request_id VARCHAR,
            action VARCHAR,                         -- the guard's overall action: allow | flag | redact | block
            outcome VARCHAR,                        -- ok | cancelled | error | blocked | ...
            envelope TEXT NOT NULL,                 -- canonical JSON: what the hash covers
            prev_hash VARCHAR(64) NOT NULL,
            hash VARCHAR(64) NOT NULL
        )""")
    )
    for name, columns in (
        ("ts", "ts"),
        ("conversation", "conversation_id, seq"),
        ("actor", "actor_ref, ts"),
        ("action", "action, ts"),
        ("surface", "surface, ts"),
        ("outcome", "outcome, ts"),
    ):
        conn.execute(text(f"CREATE INDEX ix_audit_{name} ON audit_records ({columns})"))
    conn.execute(
        text("""
        CREATE TABLE audit_content (
            record_id VARCHAR NOT NULL PRIMARY KEY,
            prompt TEXT,
            output TEXT,
            expires_at VARCHAR NOT NULL
        )""")
    )
    conn.execute(
        text(f"""
        CREATE TABLE audit_checkpoints (
            seq {"BIGINT" if postgres(conn) else "INTEGER"} NOT NULL PRIMARY KEY,  -- the last record it covers
            ts VARCHAR NOT NULL,
            head VARCHAR(64) NOT NULL,
            prev_sig VARCHAR NOT NULL,
            key_id VARCHAR NOT NULL,
            sig VARCHAR NOT NULL
        )""")
    )
    if postgres(conn):
        conn.execute(text(_REFUSE))
        conn.execute(text(_EXPIRE_ONLY))
    for table in ("audit_records", "audit_checkpoints"):
        for verb in ("update", "delete", "truncate"):
            _refuse(conn, table, verb, "the audit log is append-only")
    _refuse(conn, "audit_content", "update", "audit content cannot be changed")
    _refuse(conn, "audit_content", "truncate", "audit content can only be deleted once it has expired")
    if postgres(conn):
        conn.execute(
            text(
                "CREATE TRIGGER audit_content_expire_only BEFORE DELETE ON audit_content FOR EACH ROW EXECUTE FUNCTION audit_content_expire_only()"
            )
        )
    else:
        conn.execute(
            text(
                f"CREATE TRIGGER audit_content_expire_only BEFORE DELETE ON audit_content WHEN old.expires_at > {NOW} "
                "BEGIN SELECT RAISE(ABORT, 'audit content can only be deleted once it has expired'); END"
            )
        )


@migration
def m002_pending_calls(conn: Any) -> None:
    """The journal of calls in progress: a call a crash cuts is found at the next start."""
    conn.execute(
        text("""
        CREATE TABLE audit_pending (
            call VARCHAR NOT NULL PRIMARY KEY,
            body TEXT NOT NULL                      -- the call's skeleton envelope (canonical JSON)
        )""")
    )


@migration
def m003_replicas(conn: Any) -> None:
    """Several replicas on one (PostgreSQL) log: each journals its calls under its own id and keeps
    a heartbeat, so a replica that dies is noticed by the others, which record its cut calls."""
    conn.execute(text("ALTER TABLE audit_pending ADD COLUMN replica VARCHAR"))
    conn.execute(
        text("""
        CREATE TABLE audit_replicas (
            replica VARCHAR NOT NULL PRIMARY KEY,
            seen_at VARCHAR NOT NULL                -- its last heartbeat (ISO time, UTC)
        )""")
    )


LEGACY = {1: 1, 2: 2}  # PRAGMA user_version of a log from before numbered migrations → the steps it already has


def migrate(conn: Any, upto: int | None = None) -> list[str]:
    """Bring the audit database forward (up to step `upto`, for tests); returns the steps applied."""
    if not migration.applied(conn) and not postgres(conn):
        version = conn.execute(text("PRAGMA user_version")).scalar() or 0
        has_records = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit_records'")).first() is not None
        if has_records:  # written before numbered migrations: adopt what its version has
            for name in migration.names[: LEGACY.get(int(version), 1)]:
                migration.mark(conn, name)
    return migration.migrate(conn, upto)
