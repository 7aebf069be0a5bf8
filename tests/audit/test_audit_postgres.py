"""The audit log on PostgreSQL, shared by several replicas: one hash chain for the whole fleet,
its order fixed by the database (each writer appends under the chain's advisory lock), verified
and exported exactly as on SQLite; append-only enforced by triggers against the application's own
role; tampering (edit, delete, reorder, truncating the tail) found as on SQLite; and a dead
replica's cut calls recorded by another once its heartbeat has stopped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import psycopg
import pytest

from server.audit import AuditConfig, AuditLog, AuditReader, Entry
from tests.audit.test_audit import body
from tests.conftest import ADMIN_TOKEN, ROOT
from tests.waiting import eventually

APP = "tandem_app"  # the role the replicas connect as: it made the tables, and still cannot rewrite them
KEY_FILES = ("hmac.key", "signing.key", "audit.pub")


def driver_url(url: str) -> str:
    return url.replace("+asyncpg", "+psycopg")


def raw(url: str) -> str:
    """The URL as psycopg itself takes it."""
    return url.replace("postgresql+asyncpg", "postgresql").replace("postgresql+psycopg", "postgresql")


@pytest.fixture
def fleet_log(postgres, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Path]:  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database owned by the application's role, and the fleet's keys in an audit folder."""
    url = driver_url(postgres.create_database(f"audit_{abs(hash(request.node.nodeid)):x}", owner=APP))
    AuditLog(AuditConfig(tmp_path / "replica-0", database_url=url)).close()  # makes the keys (and the schema)
    return url, tmp_path / "replica-0"


def replica_dir(keys: Path, name: str) -> Path:
    """An audit folder for one more replica, holding copies of the fleet's keys."""
    folder = keys.parent / name
    folder.mkdir(exist_ok=True)
    for key in KEY_FILES:
        shutil.copy2(keys / key, folder / key)
    return folder


def filled(url: str, keys: Path, n: int = 25) -> None:
    log = AuditLog(AuditConfig(keys, database_url=url, checkpoint_every=10))
    for i in range(n):
        b = body(i, action="block" if i == 7 else "allow", outcome="blocked" if i == 7 else "ok")
        b["prompt"]["content_hmac"] = log.seal_content(f"prompt {i}")
        b["output"]["content_hmac"] = log.seal_content(f"answer {i}")
        log.submit(Entry(b, f"prompt {i}", f"answer {i}"))
    log.close()


def verify(url: str, keys: Path):  # type: ignore[no-untyped-def]
    reader = AuditReader(keys, database_url=url)
    try:
        return reader.verify()
    finally:
        reader.close()


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from server.audit import AuditConfig, AuditLog, Entry
    from tests.audit.test_audit import body
    url, folder, name, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    log = AuditLog(AuditConfig(folder, database_url=url, checkpoint_every=16)).start()
    for i in range(n):
        b = body(i, conversation=name)
        b["request_id"] = f"{name}-{i}"
        prompt, output = f"prompt {name} {i}", f"answer {name} {i}"
        b["prompt"]["content_hmac"], b["output"]["content_hmac"] = log.seal_content(prompt), log.seal_content(output)
        log.submit(Entry(b, prompt, output))
        if i % 5 == 0:
            log.flush()  # (small batches: the replicas' writes interleave)
    log.close()
""")


def test_three_replicas_writing_at_once_make_one_chain_that_verifies(fleet_log: tuple[str, Path]) -> None:
    url, keys = fleet_log
    folders = [keys, replica_dir(keys, "replica-1"), replica_dir(keys, "replica-2")]
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, str(folder), f"r{i}", "60"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for i, folder in enumerate(folders)
    ]
    for w in writers:
        _, errors = w.communicate(timeout=300)
        assert w.returncode == 0, errors
    v = verify(url, keys)
    assert v.ok, v.problem
    assert v.records == 180 and v.content_checked == 180 and v.signed_through == 180
    with psycopg.connect(raw(url)) as db:
        seqs = [r[0] for r in db.execute("SELECT seq FROM audit_records ORDER BY seq")]
        owners = [r[0] for r in db.execute("SELECT conversation_id FROM audit_records ORDER BY seq")]
    assert seqs == list(range(1, 181))  # one chain, no gap, no seq twice
    assert set(owners) == {"r0", "r1", "r2"} and owners != sorted(owners)  # the replicas' records interleave
    # the operator's commands read the fleet's log by URL, exactly as they read a file
    cli = [sys.executable, "-m", "server.cli", "audit"]
    checked = subprocess.run(
        [*cli, "verify", "--audit-dir", str(keys), "--audit-database-url", url], capture_output=True, text=True, cwd=ROOT
    )
    assert checked.returncode == 0 and "OK: 180 records chained" in checked.stdout, checked.stderr
    out = keys.parent / "fleet.jsonl"
    exported = subprocess.run(
        [*cli, "export", "--out", str(out), "--audit-dir", str(keys), "--audit-database-url", url], capture_output=True, text=True, cwd=ROOT
    )
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == list(range(1, 181))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_records SET outcome = 'ok' WHERE seq = 8",
        "DELETE FROM audit_records WHERE seq = 3",
        "TRUNCATE audit_records",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_checkpoints",
        "UPDATE audit_content SET prompt = 'x'",
        "DELETE FROM audit_content",
    ],
)
def test_the_applications_own_role_cannot_rewrite_the_log(fleet_log: tuple[str, Path], statement: str) -> None:
    url, keys = fleet_log
    filled(url, keys)
    with psycopg.connect(raw(url)) as db:  # as tandem_app, the tables' owner
        assert db.execute("SELECT current_user").fetchone() == (APP,)
        with pytest.raises(psycopg.errors.RaiseException, match="append-only|cannot be changed|expired"):
            db.execute(statement)
    assert verify(url, keys).ok


def tamper(postgres, url: str, *statements: str) -> None:  # type: ignore[no-untyped-def]
    """As the cluster's superuser, who can switch the triggers off: what an attacker with the database would do."""
    database = url.rsplit("/", 1)[1]
    postgres.sql("; ".join(["SET session_replication_role = replica", *statements]), database=database)


@pytest.mark.parametrize(
    ("statements", "bad_seq", "problem"),
    [
        (['UPDATE audit_records SET envelope = replace(envelope, \'"status":"blocked"\', \'"status":"ok"\') WHERE seq = 8'], 8, "altered"),
        (["UPDATE audit_records SET action = 'allow' WHERE seq = 8"], 8, "action"),
        (["DELETE FROM audit_records WHERE seq = 12"], 12, "missing"),
        (
            [
                "UPDATE audit_records SET seq = -1 WHERE seq = 5",
                "UPDATE audit_records SET seq = 5 WHERE seq = 6",
                "UPDATE audit_records SET seq = 6 WHERE seq = -1",
            ],
            5,
            "",
        ),
        (["DELETE FROM audit_records WHERE seq > 22"], 23, "deleted"),
    ],
    ids=["edit", "edit-index", "delete", "reorder", "truncate-tail"],
)
def test_tampering_is_found_on_postgresql_as_on_sqlite(postgres, fleet_log, statements, bad_seq, problem) -> None:  # type: ignore[no-untyped-def]
    url, keys = fleet_log
    filled(url, keys)
    assert verify(url, keys).ok
    tamper(postgres, url, *statements)
    v = verify(url, keys)
    assert not v.ok and v.first_bad_seq == bad_seq and problem in (v.problem or ""), v


def test_a_dead_replicas_cut_calls_are_recorded_by_another_once_its_heartbeat_stops(fleet_log: tuple[str, Path]) -> None:
    url, keys = fleet_log

    def config(folder: Path) -> AuditConfig:
        return AuditConfig(folder, database_url=url, lease_seconds=1.5)

    dead = AuditLog(config(keys))  # no writer thread: after this, no heartbeat (a replica SIGKILLed)
    dead.open_call({"type": "llm.interaction", "surface": "support_chat", "request_id": "cut-on-a"})
    live = AuditLog(config(replica_dir(keys, "replica-1"))).start()
    live_call = live.open_call({"type": "llm.interaction", "surface": "support_chat", "request_id": "running-on-b"})
    live.flush()
    starting = AuditLog(config(replica_dir(keys, "replica-2"))).start()  # starts while A's heartbeat is fresh
    assert starting.recovered == 0  # not yet: A may only be slow

    def interrupted() -> list[str]:
        with psycopg.connect(raw(url)) as db:
            rows = db.execute("SELECT envelope FROM audit_records").fetchall()
        return [json.loads(r[0])["request_id"] for r in rows if json.loads(r[0])["outcome"]["status"] == "interrupted"]

    assert eventually(interrupted, "A's cut call recorded by a live replica", timeout=30) == ["cut-on-a"]
    live.submit(Entry({**body(1), "request_id": "running-on-b"}, call=live_call))  # B's call ends normally: one record, not interrupted
    for log in (live, starting):
        log.close()
    dead.db.dispose()
    assert interrupted() == ["cut-on-a"] and verify(url, keys).ok


def test_a_server_keeps_its_audit_records_on_postgresql_and_its_review_reads_them(tiny_server, fleet_log: tuple[str, Path]) -> None:  # type: ignore[no-untyped-def]
    """`tandem serve --audit-database-url`: each call's record goes to the fleet's chain, and /audit reads and verifies it there."""
    url, _ = fleet_log
    with tiny_server(audit_database_url=url) as s:
        asked = httpx.post(
            f"{s.url}/v1/chat/completions", json={"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        )
        assert asked.status_code == 200, asked.text
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        records = eventually(
            lambda: httpx.get(f"{s.url}/audit/api/records", headers=admin).json()["records"], "the call's record in /audit"
        )
        assert records[0]["type"] == "llm.interaction"
        verified = httpx.get(f"{s.url}/audit/api/verify", headers=admin).json()
        assert verified["ok"] and verified["records"] >= 1, verified
    with psycopg.connect(raw(url)) as db:
        assert db.execute("SELECT count(*) FROM audit_records").fetchone()[0] >= 1
    assert not (s.audit_dir / "audit.db").exists()  # nothing went to a local file
