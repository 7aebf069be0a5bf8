"""The audit record as a type (`server/audit/record.py`) and the audit database's numbered
migrations: the indexed columns come from the envelope's fields, every envelope survives a round
trip, a blank database and one written by the code before migrations (schema 2, a fixture made by
`tests/golden/audit-v2/make.py` at 55c775e) both end on the same schema, and the old log, with a
call its crash cut, still verifies after the migration and after new records."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from server.audit import AuditConfig, AuditLog, AuditReader, Entry, Filters, migrations, record, store, treehead
from server.audit.record import ActorRef, Envelope, GuardRef, ModelRef, OutputRef, ParamsRef, PromptRef, Timing

OLD = Path(__file__).resolve().parents[1] / "golden" / "audit-v2"

TEXT = st.one_of(st.none(), st.text(max_size=12))
ENVELOPES = st.builds(
    Envelope,
    st.sampled_from(record.KINDS),
    TEXT,
    TEXT,
    actor=st.one_of(st.none(), st.builds(ActorRef, st.text(max_size=8), TEXT, TEXT, TEXT, TEXT)),
    conversation_id=TEXT,
    message_id=TEXT,
    model=st.one_of(
        st.none(),
        st.builds(
            ModelRef,
            st.text(max_size=8),
            TEXT,
            st.one_of(
                st.none(),
                st.builds(
                    ParamsRef,
                    st.one_of(st.none(), st.integers(1, 4096)),
                    st.one_of(st.none(), st.floats(0, 2), st.just("nan")),
                    st.one_of(st.none(), st.floats(0.01, 1)),
                    st.one_of(st.none(), st.integers(0, 2**63)),
                    st.integers(0, 4),
                ),
            ),
        ),
    ),
    prompt=st.one_of(
        st.none(),
        st.builds(
            PromptRef,
            st.sampled_from(["text", "fim", "chat"]),
            st.one_of(st.none(), st.integers(0, 10**6)),
            context=st.one_of(st.none(), st.dictionaries(st.text(max_size=6), st.integers(), max_size=3)),
        ),
    ),
    guard=st.builds(
        GuardRef,
        st.sampled_from([None, "allow", "flag", "redact", "block"]),
        TEXT,
        TEXT,
        st.one_of(
            st.none(),
            st.lists(
                st.fixed_dictionaries(
                    {
                        "scanner": st.text(max_size=6),
                        "findings": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["aws_access_key", "email"])}), max_size=2),
                    }
                ),
                max_size=3,
            ).map(tuple),
        ),
    ),
    output=st.one_of(st.none(), st.builds(OutputRef, st.integers(0, 100), finish_reason=TEXT)),
    timing=st.one_of(st.none(), st.builds(Timing, TEXT, st.one_of(st.none(), st.integers(0, 10**5)))),
    outcome=st.builds(record.Outcome, TEXT, TEXT, TEXT),
)


@settings(max_examples=200, deadline=None)
@given(ENVELOPES)
def test_every_envelope_reads_back_as_it_was_written(envelope: Envelope) -> None:
    written = envelope.to_json()
    assert Envelope.read(written) == envelope and Envelope.read(written).to_json() == written
    summary = envelope.summary()
    assert summary["action"] == envelope.guard.action and sum(summary["findings"].values()) == sum(
        len(r["findings"]) for r in (*(envelope.guard.input or ()), *(envelope.guard.output or ()))
    )


def test_the_indexed_columns_are_the_fields_declared_indexed_and_the_tables_columns(tmp_path: Path) -> None:
    assert record.INDEXED == {
        "type": ("type",),
        "surface": ("surface",),
        "request_id": ("request_id",),
        "actor_ref": ("actor", "user_ref"),
        "conversation_id": ("conversation_id",),
        "action": ("guard", "action"),
        "outcome": ("outcome", "status"),
        "id": ("id",),
        "ts": ("ts",),
    }
    store.open_db(tmp_path / "audit.db", writer=True).dispose()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        for table in store.metadata.tables.values():
            assert {r[1] for r in db.execute(f"PRAGMA table_info({table.name})")} == {c.name for c in table.columns}, table.name


def test_a_record_of_an_older_or_damaged_shape_still_reads() -> None:
    assert Envelope.read({}).type == "unknown"
    damaged = Envelope.read({"type": "llm.interaction", "guard": "allow", "actor": ["x"], "model": {}, "extra_field": 1})
    assert damaged.guard == GuardRef() and damaged.actor is None and damaged.model == ModelRef("unknown")


def _schema(path: Path) -> set[tuple[str, str]]:
    """Tables with their columns, indexes and triggers by name (SQL text aside: the old file was made by create_all)."""
    with sqlite3.connect(path) as db:
        out = {(kind, name) for kind, name in db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            out |= {("column", f"{table}.{r[1]}:{r[2]}:{r[3]}:{r[5]}") for r in db.execute(f"PRAGMA table_info({table})")}
    return out


def _old_log(directory: Path) -> Path:
    directory.mkdir(mode=0o700)
    for name in ("hmac.key", "signing.key", "audit.pub", "checkpoints.jsonl"):
        shutil.copy(OLD / name, directory / name)
    with sqlite3.connect(directory / "audit.db") as db:
        db.executescript((OLD / "audit.sql").read_text())
        db.execute("PRAGMA user_version=2")
    return directory


def test_migrations_build_a_blank_database_step_by_step(tmp_path: Path) -> None:
    engine = store.open_db(tmp_path / "blank.db")  # a reader: migrates nothing
    with engine.begin() as conn:
        assert migrations.migrate(conn, upto=1) == ["m001_records_content_checkpoints"]
        assert migrations.migrate(conn) == migrations.migration.names[1:]
        assert migrations.migrate(conn) == []
    engine.dispose()
    store.open_db(tmp_path / "direct.db", writer=True).dispose()
    assert _schema(tmp_path / "blank.db") == _schema(tmp_path / "direct.db")


def test_a_log_from_before_migrations_is_adopted_and_still_verifies(tmp_path: Path) -> None:
    old = _old_log(tmp_path / "audit")
    before = AuditReader(old).verify(treehead.read(old / "checkpoints.jsonl"))
    assert before.ok and before.records == 8 and before.checkpoints == 1 and before.tree_heads_checked == 1, before.problem

    log = AuditLog(AuditConfig(old)).start()  # migrates, and records the call the old log's crash cut
    assert log.recovered == 1
    log.submit(Entry(Envelope("completion.feedback", "ide_completion", "cmpl-1", outcome=record.Outcome("accepted")).to_json()))
    log.close()
    with sqlite3.connect(old / "audit.db") as db:
        assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == migrations.migration.names
    fresh = tmp_path / "fresh"
    AuditLog(AuditConfig(fresh)).close()
    assert _schema(old / "audit.db") - {("table", "_migrations")} == _schema(fresh / "audit.db") - {("table", "_migrations")}

    reader = AuditReader(old)
    after = reader.verify(treehead.read(old / "checkpoints.jsonl"))  # the old heads and the ones the migrated log published
    assert after.ok and after.records == 10 and after.content_checked + after.content_expired >= 7, (
        after.problem
    )  # 6 prompts, kept or expired
    rows = [Envelope.read(r["record"]) for r in reader.search(Filters(), limit=100, newest_first=False)]
    assert [e.type for e in rows] == ["llm.interaction"] * 6 + [
        "request.refused",
        "completion.feedback",
        "llm.interaction",
        "completion.feedback",
    ]
    assert [e.outcome.status for e in rows[6:]] == ["refused", "accepted", "interrupted", "accepted"]
    assert rows[2].guard.finding_types() == {"aws_access_key": 1} and rows[0].actor and rows[0].actor.user_ref.startswith("hmac:")
    reader.close()
