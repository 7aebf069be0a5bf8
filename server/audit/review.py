"""The reading side, shared by `tandem audit` and the `/audit` page: filters, one record, verification, export."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, and_, select

from ..clock import utc_now
from . import merkle, store, treehead
from .chain import GENESIS, canonical, checkpoint_text, record_hash
from .keys import load_public_key, mac, verify_signature
from .record import indexed_values

RELATIVE = re.compile(r"^(\d+)([smhd])$")


def parse_time(value: str) -> str:
    """An ISO time (any prefix of 2026-11-22T10:15:03.412Z) or a span back from now: 90m, 24h, 7d."""
    m = RELATIVE.match(value.strip())
    if m:
        import datetime as dt

        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    if not re.match(r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]*Z?)?$", value.strip()):
        raise ValueError(f"not a time: {value!r} (use 2026-11-22, 2026-11-22T10:15, or 90m / 24h / 7d)")
    return value.strip().replace(" ", "T")


@dataclass
class Filters:
    since: str | None = None
    until: str | None = None
    surface: str | None = None
    verdict: str | None = None  # the guard's action: allow | flag | redact | block
    outcome: str | None = None  # ok | cancelled | error | blocked
    conversation: str | None = None
    user: str | None = None  # a raw user id (pseudonymised here) or an `hmac:` reference
    type: str | None = None
    before_seq: int | None = None  # paging: records older than this

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Verification:
    ok: bool
    records: int = 0
    checkpoints: int = 0
    head: str = GENESIS
    signed_through: int = 0  # the last record covered by a valid signed checkpoint
    first_bad_seq: int | None = None
    first_bad_id: str | None = None
    problem: str | None = None
    content_checked: int = 0
    content_expired: int = 0
    tree_heads_checked: int = 0
    tree_size: int | None = None
    tree_root: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AuditReader:
    def __init__(
        self, directory: Path, hmac_key: bytes | None = None, public_key: Ed25519PublicKey | None = None, database_url: str | None = None
    ) -> None:
        """The log in `directory` (its keys always; its records unless they are on PostgreSQL at `database_url`)."""
        self.directory = directory
        path = directory / "audit.db"
        if database_url is None and not path.exists():
            raise FileNotFoundError(f"no audit log at {path}")
        self.db: Engine = store.open_db(database_url or path)
        key_path = directory / "hmac.key"
        self.hmac_key = hmac_key if hmac_key is not None else (key_path.read_bytes() if key_path.exists() else None)
        self.public_key = public_key if public_key is not None else load_public_key(directory / "audit.pub")

    def close(self) -> None:
        self.db.dispose()

    def _user_ref(self, user: str) -> str:
        if user.startswith("hmac:") or self.hmac_key is None:
            return user
        return mac(self.hmac_key, user, "user")

    def _where(self, f: Filters) -> Any:
        c = store.records.c
        conds = []
        if f.since:
            conds.append(c.ts >= parse_time(f.since))
        if f.until:
            conds.append(c.ts <= parse_time(f.until))
        for col, value in (
            (c.surface, f.surface),
            (c.action, f.verdict),
            (c.outcome, f.outcome),
            (c.conversation_id, f.conversation),
            (c.type, f.type),
        ):
            if value:
                conds.append(col == value)
        if f.user:
            conds.append(c.actor_ref == self._user_ref(f.user))
        if f.before_seq:
            conds.append(c.seq < f.before_seq)
        return and_(True, *conds)

    def search(self, filters: Filters, limit: int = 50, newest_first: bool = True) -> list[dict[str, Any]]:
        order = store.records.c.seq.desc() if newest_first else store.records.c.seq.asc()
        query = select(store.records).where(self._where(filters)).order_by(order).limit(limit)
        with self.db.connect() as conn:
            return [self._row(r) for r in conn.execute(query)]

    def get(self, ref: str) -> dict[str, Any] | None:
        """One record by id or seq, with its content (or None where it expired or was not kept)."""
        c = store.records.c
        if len(ref) > 64:
            return None
        cond = c.seq == int(ref) if ref.isascii() and ref.isdigit() and len(ref) < 19 else c.id == ref
        with self.db.connect() as conn:
            row = conn.execute(select(store.records).where(cond)).first()
            if row is None:
                return None
            content = conn.execute(select(store.contents).where(store.contents.c.record_id == row.id)).first()
        return {**self._row(row), "content": _content(content)}

    @staticmethod
    def _row(row: Any) -> dict[str, Any]:
        return {"seq": row.seq, "id": row.id, "hash": row.hash, "prev_hash": row.prev_hash, "record": json.loads(row.envelope)}

    def verify(self, tree_heads: list[dict[str, Any]] | None = None) -> Verification:
        """Re-hash every record in order, check seq continuity, the indexed columns, the content
        HMACs, and every checkpoint's signature and chain. With `tree_heads` (signed heads kept
        elsewhere), also check that the log still holds exactly what each of them covers and
        nothing after the newest. Names the first bad record."""
        v = Verification(ok=True)
        heads = sorted(tree_heads or [], key=lambda th: int(th.get("size", 0)))
        at_sizes = {int(th.get("size", 0)) for th in heads}
        tree, roots = merkle.CompactRange(), {}  # the tree's root after each record a head covers
        now = utc_now()
        hashes: dict[int, str] = {}
        prev, expected = GENESIS, 1

        def bad(seq: int, record_id: str | None, problem: str) -> Verification:
            v.ok, v.first_bad_seq, v.first_bad_id, v.problem = False, seq, record_id, problem
            return v

        with self.db.connect() as conn:
            cps = list(conn.execute(select(store.checkpoints).order_by(store.checkpoints.c.seq)))
            wanted = {cp.seq for cp in cps}
            content = {r.record_id: r for r in conn.execute(select(store.contents))}
            for row in conn.execute(select(store.records).order_by(store.records.c.seq)):
                if row.seq != expected:
                    return bad(expected, None, f"record {expected} is missing (the next record is {row.seq})")
                if row.prev_hash != prev:
                    return bad(
                        row.seq, row.id, f"record {row.seq} does not follow record {row.seq - 1} (prev_hash differs): reordered or replaced"
                    )
                if record_hash(prev, row.envelope.encode("utf-8")) != row.hash:
                    return bad(row.seq, row.id, f"record {row.seq} was altered (its hash no longer matches its contents)")
                envelope = json.loads(row.envelope)
                if canonical(envelope).decode("utf-8") != row.envelope or envelope.get("seq") != row.seq:
                    return bad(row.seq, row.id, f"record {row.seq} is not in canonical form or carries another seq")
                for col, value in indexed_values(envelope).items():
                    if getattr(row, col) != value:
                        return bad(row.seq, row.id, f"record {row.seq}: column {col!r} differs from the sealed record")
                if row.id in content:
                    problem = self._check_content(envelope, content[row.id])
                    if problem:
                        return bad(row.seq, row.id, f"record {row.seq}: {problem}")
                    v.content_checked += 1
                elif envelope.get("content_until") and envelope["content_until"] > now:
                    return bad(
                        row.seq,
                        row.id,
                        f"record {row.seq}: its content was deleted before it expired (kept until {envelope['content_until']})",
                    )
                elif envelope.get("prompt", {}).get("content_hmac"):
                    v.content_expired += 1
                tree.append(merkle.leaf_hash(row.envelope.encode("utf-8")))
                if row.seq in at_sizes:
                    roots[row.seq] = tree.root().hex()
                if row.seq in wanted or row.seq in at_sizes:
                    hashes[row.seq] = row.hash
                prev, expected = row.hash, expected + 1
        v.records, v.head = expected - 1, prev

        prev_sig = ""
        for cp in cps:
            if cp.seq > v.records:
                return bad(v.records + 1, None, f"records after {v.records} were deleted (a checkpoint covers up to {cp.seq})")
            if cp.head != hashes.get(cp.seq):
                return bad(cp.seq, None, f"the checkpoint at record {cp.seq} does not match the chain there")
            if cp.prev_sig != prev_sig:
                return bad(cp.seq, None, f"the checkpoint at record {cp.seq} does not follow the previous checkpoint")
            if not verify_signature(self.public_key, cp.sig, checkpoint_text(cp.seq, cp.head, cp.prev_sig)):
                return bad(cp.seq, None, f"the checkpoint at record {cp.seq} has an invalid signature")
            prev_sig, v.signed_through = cp.sig, cp.seq
            v.checkpoints += 1
        if v.records > v.signed_through:
            v.notes.append(f"records {v.signed_through + 1}..{v.records} are chained but not yet covered by a signed checkpoint")
        if tree_heads is not None:
            return self._check_heads(v, heads, roots, hashes)
        return v

    def _check_heads(self, v: Verification, heads: list[dict[str, Any]], roots: dict[int, str], hashes: dict[int, str]) -> Verification:
        """The log against signed tree heads held elsewhere: truncation, rollback, rewriting, forged appends."""

        def bad(seq: int, problem: str) -> Verification:
            v.ok, v.first_bad_seq, v.problem = False, seq, problem
            return v

        if not heads:
            return bad(1, "the checkpoint file holds no tree head")
        for th in heads:
            size, when = int(th["size"]), th.get("ts", "?")
            if not treehead.valid(self.public_key, th):
                return bad(size, f"the tree head of {when} (size {size}) is not signed by this log's key: forged, or the key was replaced")
            if size > v.records:
                return bad(
                    v.records + 1,
                    f"the log has {v.records} records but the tree head of {when} covers {size}: "
                    "records were deleted or the log was rolled back to an older copy",
                )
            if roots.get(size) != th["root"] or hashes.get(size) != th["head"]:
                return bad(
                    size, f"the first {size} records are not those the tree head of {when} covers: records were rewritten or replaced"
                )
            v.tree_heads_checked += 1
        newest = heads[-1]
        if int(newest["size"]) < v.records:
            return bad(
                int(newest["size"]) + 1,
                f"records {int(newest['size']) + 1}..{v.records} were appended after the newest tree head "
                f"you hold ({newest.get('ts')}): nothing signed covers them (export the heads again if they are newer)",
            )
        v.tree_size, v.tree_root = v.records, roots.get(v.records)
        return v

    def leaves(self) -> list[bytes]:
        with self.db.connect() as conn:
            return store.leaves(conn)

    def _check_content(self, envelope: dict[str, Any], row: Any) -> str | None:
        if self.hmac_key is None:
            return None
        for part in ("prompt", "output"):
            sealed = (envelope.get(part) or {}).get("content_hmac")
            stored = getattr(row, part)
            if stored is None and (envelope.get(part) or {}).get("content_kept") is False:
                continue  # sealed but never kept (a prompt refused before the secret scan): nothing to compare
            if sealed is None and stored is None:
                continue
            if sealed != mac(self.hmac_key, stored or "", "content"):
                return f"its stored {part} does not match the sealed HMAC"
        return None

    def export(self, out: Path, filters: Filters) -> dict[str, Any]:
        """JSON Lines (oldest first), plus `<out>.manifest.json`: first/last record, count, sha256."""
        rows = self.search(filters, limit=10**9, newest_first=False)
        with self.db.connect() as conn:  # one query for every record's content, not one per record
            contents = {r.record_id: r for r in conn.execute(select(store.contents))}
        digest = hashlib.sha256()
        with open(out, "wb") as f:
            for row in rows:
                line = (
                    canonical(
                        {
                            "seq": row["seq"],
                            "id": row["id"],
                            "prev_hash": row["prev_hash"],
                            "hash": row["hash"],
                            "record": row["record"],
                            "content": _content(contents.get(row["id"])),
                        }
                    )
                    + b"\n"
                )
                f.write(line)
                digest.update(line)
        verification = self.verify()
        ends = {"first": rows[0], "last": rows[-1]} if rows else {"first": None, "last": None}
        manifest = {
            "file": out.name,
            "format": "jsonl",
            "records": len(rows),
            "sha256": digest.hexdigest(),
            "exported_at": utc_now(),
            "filters": filters.describe(),
            **{k: ({"seq": r["seq"], "id": r["id"], "ts": r["record"]["ts"], "hash": r["hash"]} if r else None) for k, r in ends.items()},
            "chain": {
                "verified": verification.ok,
                "records": verification.records,
                "head": verification.head,
                "signed_through": verification.signed_through,
                "problem": verification.problem,
            },
            "how_to_check": "each line: hash == sha256(prev_hash + '\\n' + canonical_json(record)); the file: sha256 of its bytes",
        }
        out.with_name(out.name + ".manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


def _content(row: Any) -> dict[str, Any] | None:
    return {"prompt": row.prompt, "output": row.output, "expires_at": row.expires_at} if row is not None else None
