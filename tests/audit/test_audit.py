"""The audit log on a real SQLite file: append-only triggers, the hash chain, signed checkpoints,
content expiry, tamper detection (edit, delete, reorder, truncate), and the `tandem audit` CLI."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.audit import AuditConfig, AuditLog, AuditReader, Entry, Filters, store
from tests.conftest import ROOT


def body(i: int, surface: str = "support_chat", action: str = "allow", outcome: str = "ok", conversation: str | None = None) -> dict:
    return {
        "type": "llm.interaction",
        "surface": surface,
        "request_id": f"req-{i}",
        "conversation_id": conversation,
        "actor": {"kind": "api_client", "user_ref": f"hmac:user{i % 3}"},
        "guard": {"action": action, "input": [], "output": []},
        "outcome": {"status": outcome, "error_code": None},
        "prompt": {"content_hmac": None},
        "output": {"content_hmac": None},
    }


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """An audit directory with 25 records (checkpoints every 10) and their content."""
    log = AuditLog(AuditConfig(tmp_path, checkpoint_every=10))
    for i in range(25):
        b = body(
            i,
            surface="ide_completion" if i % 2 else "support_chat",
            action="block" if i == 7 else "allow",
            outcome="blocked" if i == 7 else "ok",
            conversation="conv-a" if i < 5 else None,
        )
        prompt, output = f"prompt {i}", f"answer {i}"
        b["prompt"]["content_hmac"] = log.seal_content(prompt)
        b["output"]["content_hmac"] = log.seal_content(output)
        log.submit(Entry(b, prompt, output))
    log.close()
    return tmp_path


def raw(directory: Path) -> sqlite3.Connection:
    return sqlite3.connect(directory / "audit.db", isolation_level=None)


def verify(directory: Path):  # type: ignore[no-untyped-def]
    reader = AuditReader(directory)
    try:
        return reader.verify()
    finally:
        reader.close()


def test_a_valid_log_verifies_with_signed_checkpoints(filled: Path) -> None:
    v = verify(filled)
    assert v.ok, v.problem
    assert v.records == 25 and v.checkpoints == 3 and v.signed_through == 25  # at 10, 20, and at close
    assert v.content_checked == 25


def test_the_database_refuses_updates_and_deletes(filled: Path) -> None:
    db = raw(filled)
    for sql in (
        "UPDATE audit_records SET outcome = 'ok' WHERE seq = 8",
        "DELETE FROM audit_records WHERE seq = 3",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_content SET prompt = 'x'",
        "DELETE FROM audit_content",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only|cannot be changed|expired"):
            db.execute(sql)
    assert verify(filled).ok


def _untrigger(db: sqlite3.Connection) -> None:
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")


def test_an_edited_record_is_named(filled: Path) -> None:
    db = raw(filled)
    _untrigger(db)
    envelope = json.loads(db.execute("SELECT envelope FROM audit_records WHERE seq = 8").fetchone()[0])
    envelope["outcome"]["status"] = "ok"  # hide a blocked call
    db.execute("UPDATE audit_records SET envelope = ? WHERE seq = 8", (json.dumps(envelope, sort_keys=True, separators=(",", ":")),))
    v = verify(filled)
    assert not v.ok and v.first_bad_seq == 8 and "altered" in v.problem


def test_an_edited_index_column_is_named(filled: Path) -> None:
    db = raw(filled)
    _untrigger(db)
    db.execute("UPDATE audit_records SET action = 'allow' WHERE seq = 8")
    v = verify(filled)
    assert not v.ok and v.first_bad_seq == 8 and "action" in v.problem


def test_a_deleted_record_is_named(filled: Path) -> None:
    db = raw(filled)
    _untrigger(db)
    db.execute("DELETE FROM audit_records WHERE seq = 12")
    v = verify(filled)
    assert not v.ok and v.first_bad_seq == 12 and "missing" in v.problem


def test_reordered_records_are_named(filled: Path) -> None:
    db = raw(filled)
    _untrigger(db)
    db.execute("UPDATE audit_records SET seq = -1 WHERE seq = 5")
    db.execute("UPDATE audit_records SET seq = 5 WHERE seq = 6")
    db.execute("UPDATE audit_records SET seq = 6 WHERE seq = -1")
    v = verify(filled)
    assert not v.ok and v.first_bad_seq == 5


def test_a_rewritten_chain_fails_on_its_checkpoint_signature(filled: Path) -> None:
    """An attacker who re-hashes every record after an edit still cannot sign the new head."""
    db = raw(filled)
    _untrigger(db)
    rows = db.execute("SELECT seq, envelope, prev_hash FROM audit_records ORDER BY seq").fetchall()
    prev = rows[0][2]
    from server.audit.chain import record_hash

    for seq, envelope, _ in rows:
        if seq == 3:
            envelope = envelope.replace('"status":"ok"', '"status":"cancelled"')
        digest = record_hash(prev, envelope.encode())
        db.execute(
            "UPDATE audit_records SET envelope = ?, prev_hash = ?, hash = ?, outcome = ? WHERE seq = ?",
            (envelope, prev, digest, json.loads(envelope)["outcome"]["status"], seq),
        )
        prev = digest
    v = verify(filled)
    assert not v.ok and v.first_bad_seq == 10 and "checkpoint" in v.problem


def test_a_truncated_tail_is_detected_through_the_checkpoint(filled: Path) -> None:
    db = raw(filled)
    _untrigger(db)
    db.execute("DELETE FROM audit_records WHERE seq > 22")
    v = verify(filled)
    assert not v.ok and v.first_bad_seq == 23 and "deleted" in v.problem


def test_altered_content_is_caught_by_its_hmac(filled: Path) -> None:
    db = raw(filled)
    _untrigger(db)
    db.execute("UPDATE audit_content SET output = 'something nicer' WHERE rowid = 4")
    v = verify(filled)
    assert not v.ok and "HMAC" in v.problem


def test_another_key_cannot_vouch_for_the_checkpoints(filled: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other") / "other.pub"
    other.write_bytes(
        Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    r = run_cli("verify", "--audit-dir", str(filled), "--public-key", str(other))
    assert r.returncode == 1 and "invalid signature" in r.stdout


def test_expired_content_is_deleted_and_the_chain_still_verifies(tmp_path: Path) -> None:
    log = AuditLog(AuditConfig(tmp_path, checkpoint_every=100))
    with log.db.begin() as conn:  # content that expired yesterday, as a retention job would find it
        store.append(
            conn,
            {**body(0), "prompt": {"content_hmac": log.seal_content("old prompt")}},
            {"prompt": "old prompt", "output": None},
            "2000-01-01T00:00:00.000Z",
        )
    log.submit(Entry({**body(1), "prompt": {"content_hmac": log.seal_content("new")}}, "new", None))
    log.close()
    reopened = AuditLog(AuditConfig(tmp_path))  # start-up applies retention
    reopened.close()
    v = verify(tmp_path)
    assert v.ok and v.content_expired == 1 and v.content_checked == 1
    reader = AuditReader(tmp_path)
    assert reader.get("1")["content"] is None and reader.get("2")["content"]["prompt"] == "new"


def test_no_content_policy_keeps_only_hmacs(tmp_path: Path) -> None:
    log = AuditLog(AuditConfig(tmp_path, content_days=0))
    log.submit(Entry({**body(0), "prompt": {"content_hmac": log.seal_content("p")}}, "p", "o"))
    log.close()
    assert raw(tmp_path).execute("SELECT count(*) FROM audit_content").fetchone()[0] == 0
    assert verify(tmp_path).ok


def test_two_writers_take_turns_on_the_chain(tmp_path: Path) -> None:
    a, b = AuditLog(AuditConfig(tmp_path)), AuditLog(AuditConfig(tmp_path))
    for i in range(10):
        (a if i % 2 else b).submit(Entry(body(i)))
    a.close()
    b.close()
    v = verify(tmp_path)
    assert v.ok and v.records == 10


def test_filters(filled: Path) -> None:
    reader = AuditReader(filled)
    assert [r["seq"] for r in reader.search(Filters(verdict="block"))] == [8]
    assert {r["record"]["surface"] for r in reader.search(Filters(surface="ide_completion"))} == {"ide_completion"}
    assert len(reader.search(Filters(conversation="conv-a"))) == 5
    assert len(reader.search(Filters(user="hmac:user1"))) == 8
    assert len(reader.search(Filters(since="1h"))) == 25 and reader.search(Filters(until="2000-01-01")) == []
    with pytest.raises(ValueError):
        reader.search(Filters(since="yesterday-ish"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", "audit", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_tail_search_show_verify(filled: Path) -> None:
    d = ["--audit-dir", str(filled)]
    tail = run_cli("tail", "-n", "3", *d)
    assert tail.returncode == 0
    assert [line.split()[0] for line in tail.stdout.splitlines()[1:]] == ["23", "24", "25"]
    found = run_cli("search", "--verdict", "block", "--json", *d)
    assert [json.loads(line)["seq"] for line in found.stdout.splitlines()] == [8]
    shown = json.loads(run_cli("show", "8", *d).stdout)
    assert shown["record"]["outcome"]["status"] == "blocked" and shown["content"]["prompt"] == "prompt 7"
    assert run_cli("show", "999", *d).returncode == 1
    ok = run_cli("verify", *d)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 25 records")
    db = raw(filled)
    _untrigger(db)
    db.execute("DELETE FROM audit_records WHERE seq = 4")
    bad = run_cli("verify", *d)
    assert bad.returncode == 1 and "FAILED at record 4" in bad.stdout


def test_cli_export_writes_jsonl_and_a_manifest(filled: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("export") / "chat.jsonl"
    r = run_cli("export", "--audit-dir", str(filled), "--surface", "support_chat", "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_bytes().splitlines()
    manifest = json.loads(out.with_name("chat.jsonl.manifest.json").read_text())
    assert manifest["records"] == len(lines) == 13
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["first"]["seq"] == 1 and manifest["last"]["seq"] == 25 and manifest["chain"]["verified"]
    assert manifest["filters"] == {"surface": "support_chat"}
    from server.audit.chain import canonical, record_hash

    for line in lines:  # each line checks on its own
        row = json.loads(line)
        assert row["record"]["surface"] == "support_chat"
        assert record_hash(row["prev_hash"], canonical(row["record"])) == row["hash"]
