"""Tampering with the audit log by someone who can write its folder, and what catches it: the
signed tree heads the server published as it wrote, held elsewhere (`verify --checkpoint`).
Each attacker drops the triggers first (anyone with the file can) and re-hashes the chain."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.audit import AuditConfig, AuditLog, AuditReader, Entry, treehead
from server.audit.chain import canonical, checkpoint_text, record_hash
from server.audit.keys import load_public_key, public_key_id
from tests.conftest import ROOT


def body(i: int) -> dict:
    return {
        "type": "llm.interaction",
        "surface": "support_chat",
        "request_id": f"req-{i}",
        "conversation_id": None,
        "actor": {"kind": "api_client", "user_ref": None},
        "guard": {"action": "allow", "input": [], "output": []},
        "outcome": {"status": "ok", "error_code": None},
        "prompt": {"content_hmac": None},
        "output": {"content_hmac": None},
    }


def fill(directory: Path, n: int, close: bool = True, start: int = 0) -> None:
    log = AuditLog(AuditConfig(directory, checkpoint_every=10)).start()
    for i in range(start, start + n):
        b = body(i)
        prompt, output = f"prompt {i}", f"answer {i}"
        b["prompt"]["content_hmac"], b["output"]["content_hmac"] = log.seal_content(prompt), log.seal_content(output)
        log.submit(Entry(b, prompt, output))
        if i % 5 == 4:
            log.flush()  # a batch at a time, as a live server writes: a head is published after each
    log.flush()
    if close:
        log.close()
    else:  # as after a SIGKILL: no shutdown checkpoint; what the writer published stays published
        log._queue.put(None)
        log._thread.join(timeout=30)  # type: ignore[union-attr]
        log.db.dispose()


def attacker(directory: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(directory / "audit.db", isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def rehash_from(conn: sqlite3.Connection, first: int) -> None:
    """Recompute the chain from record `first` on, as a forger would after editing."""
    prev = conn.execute("SELECT hash FROM audit_records WHERE seq = ?", (first - 1,)).fetchone()
    prev_hash = prev[0] if prev else "0" * 64
    for seq, envelope in conn.execute("SELECT seq, envelope FROM audit_records WHERE seq >= ? ORDER BY seq", (first,)).fetchall():
        digest = record_hash(prev_hash, envelope.encode())
        conn.execute("UPDATE audit_records SET prev_hash = ?, hash = ? WHERE seq = ?", (prev_hash, digest, seq))
        prev_hash = digest


def rewrite(conn: sqlite3.Connection, seq: int, change: dict) -> None:
    envelope = json.loads(conn.execute("SELECT envelope FROM audit_records WHERE seq = ?", (seq,)).fetchone()[0])
    envelope.update(change)
    conn.execute(
        "UPDATE audit_records SET envelope = ?, outcome = ? WHERE seq = ?",
        (canonical(envelope).decode(), envelope["outcome"]["status"], seq),
    )


def verify(directory: Path, heads: Path | None, public: Path | None = None):  # type: ignore[no-untyped-def]
    reader = AuditReader(directory, public_key=load_public_key(public) if public else None)
    try:
        return reader.verify(treehead.read(heads) if heads else None)
    finally:
        reader.close()


@pytest.fixture
def log_and_heads(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 30-record log; the heads and the public key copied off the machine right after."""
    directory, elsewhere = tmp_path / "audit", tmp_path / "elsewhere"
    fill(directory, 30)
    elsewhere.mkdir()
    shutil.copy(directory / "checkpoints.jsonl", elsewhere / "heads.jsonl")
    shutil.copy(directory / "audit.pub", elsewhere / "audit.pub")
    return directory, elsewhere / "heads.jsonl", elsewhere / "audit.pub"


def test_an_untouched_log_verifies_against_the_heads_held_elsewhere(log_and_heads) -> None:  # type: ignore[no-untyped-def]
    directory, heads, public = log_and_heads
    v = verify(directory, heads, public)
    assert v.ok, v.problem
    assert v.tree_heads_checked >= 2 and v.tree_size == 30
    assert len(treehead.read(heads)) == v.tree_heads_checked


def test_deleting_the_last_records_with_their_checkpoint_is_caught(log_and_heads) -> None:  # type: ignore[no-untyped-def]
    directory, heads, public = log_and_heads
    conn = attacker(directory)
    conn.execute("DELETE FROM audit_records WHERE seq > 24")
    conn.execute("DELETE FROM audit_checkpoints WHERE seq > 24")
    conn.close()
    assert verify(directory, None).ok  # the database alone no longer knows
    v = verify(directory, heads, public)
    assert not v.ok and "deleted or the log was rolled back" in v.problem


def test_a_rollback_to_an_older_copy_is_caught(tmp_path: Path) -> None:
    directory, elsewhere = tmp_path / "audit", tmp_path / "elsewhere"
    fill(directory, 12)
    shutil.copytree(directory, tmp_path / "old-copy")
    fill(directory, 12, start=12)
    elsewhere.mkdir()
    shutil.copy(directory / "checkpoints.jsonl", elsewhere / "heads.jsonl")
    shutil.rmtree(directory)
    shutil.copytree(tmp_path / "old-copy", directory)
    assert verify(directory, None).ok
    v = verify(directory, elsewhere / "heads.jsonl")
    assert not v.ok and "rolled back" in v.problem


def test_rewriting_the_unsigned_tail_after_a_kill_is_caught(tmp_path: Path) -> None:
    directory, elsewhere = tmp_path / "audit", tmp_path / "elsewhere"
    fill(directory, 25, close=False)  # checkpoints at 10 and 20 only: 21..25 unsigned in the database
    elsewhere.mkdir()
    shutil.copy(directory / "checkpoints.jsonl", elsewhere / "heads.jsonl")
    conn = attacker(directory)
    rewrite(conn, 23, {"outcome": {"status": "blocked", "error_code": "content_blocked"}})
    rehash_from(conn, 23)
    conn.close()
    plain = verify(directory, None)
    assert plain.ok and any("not yet covered" in n for n in plain.notes)  # the chain alone accepts it
    v = verify(directory, elsewhere / "heads.jsonl")
    assert not v.ok and "rewritten" in v.problem


def test_a_forged_record_appended_after_the_head_is_caught(log_and_heads) -> None:  # type: ignore[no-untyped-def]
    directory, heads, public = log_and_heads
    conn = attacker(directory)
    seq, prev = conn.execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
    forged = {**body(999), "v": 1, "seq": seq + 1, "id": "01FORGED", "ts": "2026-12-01T00:00:00.000Z"}
    sealed = canonical(forged)
    conn.execute(
        "INSERT INTO audit_records (seq, id, ts, type, surface, request_id, action, outcome, envelope, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq + 1,
            "01FORGED",
            forged["ts"],
            "llm.interaction",
            "support_chat",
            "req-999",
            "allow",
            "ok",
            sealed.decode(),
            prev,
            record_hash(prev, sealed),
        ),
    )
    conn.close()
    v = verify(directory, heads, public)
    assert not v.ok and "appended after the newest tree head" in v.problem


def test_an_edit_in_the_middle_re_hashed_and_re_signed_with_a_new_key_is_caught(log_and_heads) -> None:  # type: ignore[no-untyped-def]
    directory, heads, public = log_and_heads
    conn = attacker(directory)
    rewrite(conn, 5, {"outcome": {"status": "error", "error_code": "engine_error"}})
    rehash_from(conn, 5)
    # the attacker replaces the key and audit.pub, and re-signs every checkpoint and every head
    key = Ed25519PrivateKey.generate()
    (directory / "audit.pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    prev_sig = ""
    for cp_seq, ts in conn.execute("SELECT seq, ts FROM audit_checkpoints ORDER BY seq").fetchall():
        head = conn.execute("SELECT hash FROM audit_records WHERE seq = ?", (cp_seq,)).fetchone()[0]
        import base64

        sig = base64.b64encode(key.sign(checkpoint_text(cp_seq, head, prev_sig))).decode()
        conn.execute(
            "UPDATE audit_checkpoints SET head = ?, prev_sig = ?, sig = ?, key_id = ? WHERE seq = ?",
            (head, prev_sig, sig, public_key_id(key.public_key()), cp_seq),
        )
        prev_sig = sig
    conn.close()
    assert verify(directory, None).ok  # the folder's own key now vouches for the forgery
    held = verify(directory, heads, public)  # the heads and the key held elsewhere do not
    assert not held.ok and ("rewritten" in held.problem or "signature" in held.problem)
    v = verify(directory, None, public)
    assert not v.ok and "signature" in v.problem


def test_deleting_a_records_content_before_it_expires_is_reported(log_and_heads) -> None:  # type: ignore[no-untyped-def]
    directory, _, _ = log_and_heads
    conn = attacker(directory)
    record_id = conn.execute("SELECT id FROM audit_records WHERE seq = 7").fetchone()[0]
    conn.execute("DELETE FROM audit_content WHERE record_id = ?", (record_id,))
    conn.close()
    v = verify(directory, None)
    assert not v.ok and v.first_bad_seq == 7 and "deleted before it expired" in v.problem


def test_the_cli_exports_heads_and_verifies_against_them(log_and_heads, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory, _, public = log_and_heads

    def tandem(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", "audit", *args, "--audit-dir", str(directory)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = tmp_path / "held.jsonl"
    assert tandem("checkpoints", "export", "--out", str(out)).returncode == 0
    ok = tandem("verify", "--checkpoint", str(out), "--public-key", str(public))
    assert ok.returncode == 0 and "tree heads" in ok.stdout, ok.stdout + ok.stderr
    proof = json.loads(tandem("prove", "7").stdout)
    assert proof["tree_size"] == 30 and proof["leaf_index"] == 6 and len(proof["path"]) == 5
    cons = json.loads(tandem("consistency", "10", "30").stdout)
    assert cons["old_size"] == 10 and cons["proof"]
    conn = attacker(directory)
    conn.execute("DELETE FROM audit_records WHERE seq > 28")
    conn.close()
    bad = tandem("verify", "--checkpoint", str(out), "--public-key", str(public))
    assert bad.returncode == 1 and "FAILED" in bad.stdout


def test_the_signing_key_can_live_outside_the_audit_folder(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "signing.key"
    log = AuditLog(AuditConfig(tmp_path / "audit", signing_key=key_path)).start()
    log.submit(Entry(body(1)))
    log.close()
    assert key_path.exists() and not (tmp_path / "audit" / "signing.key").exists()
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert verify(tmp_path / "audit", tmp_path / "audit" / "checkpoints.jsonl").ok


def test_proofs_from_the_log_verify_with_an_independent_rfc9162_verifier(tmp_path: Path) -> None:
    """tests/rfc9162.py was written from the RFC's text alone: its roots and proofs and ours must agree,
    on a real log's records, for every size and every leaf."""
    from server.audit import merkle
    from tests import rfc9162

    fill(tmp_path, 37)
    reader = AuditReader(tmp_path)
    try:
        with reader.db.connect() as conn:
            entries = [r[0].encode() for r in conn.exec_driver_sql("SELECT envelope FROM audit_records ORDER BY seq")]
        leaves = reader.leaves()
    finally:
        reader.close()
    assert leaves == [rfc9162.leaf_hash(e) for e in entries]
    for n in range(1, len(entries) + 1):
        ours_root = merkle.root(leaves[:n])
        assert ours_root == rfc9162.mth(entries[:n])
        for i in range(n):
            path = merkle.inclusion_proof(i, leaves[:n])
            assert path == rfc9162.inclusion_path(i, entries[:n])
            assert rfc9162.verify_inclusion(i, n, leaves[i], path, ours_root)
            assert merkle.verify_inclusion(i, n, leaves[i], path, ours_root)
            assert not merkle.verify_inclusion(i, n, merkle.leaf_hash(b"forged"), path, ours_root)
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(m, leaves[:n])
            assert proof == rfc9162.consistency_proof(m, entries[:n])
            old = merkle.root(leaves[:m])
            assert rfc9162.verify_consistency(m, n, old, ours_root, proof) and merkle.verify_consistency(m, n, old, ours_root, proof)
            if m < n:
                assert not merkle.verify_consistency(m, n, merkle.leaf_hash(b"x"), ours_root, proof)
    # the whole log's root is the one its newest published head signed
    assert treehead.read(tmp_path / "checkpoints.jsonl")[-1]["root"] == merkle.root(leaves).hex()
