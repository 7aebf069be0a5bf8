"""`tandem audit tail | search | show | verify | export`: reviewing the log from a terminal."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..settings import environment
from . import merkle, treehead
from .keys import load_public_key
from .log import AuditConfig
from .record import Envelope
from .review import AuditReader, Filters


def _reader(args: argparse.Namespace) -> AuditReader:
    directory = _directory(args)
    public = load_public_key(Path(args.public_key)) if getattr(args, "public_key", None) else None
    return AuditReader(directory, public_key=public, database_url=args.audit_database_url or environment().audit_database_url)


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(
        since=args.since,
        until=args.until,
        surface=args.surface,
        verdict=args.verdict,
        outcome=args.outcome,
        conversation=args.conversation,
        user=args.user,
        type=args.type,
    )


def _line(row: dict[str, Any]) -> str:
    r = Envelope.read(row["record"]).summary()
    return (
        f"{row['seq']:>6}  {r['ts']}  {r['surface'] or r['type']:<15} {r['action'] or '-':<7} "
        f"{r['outcome'] or '-':<9} {r['finish_reason'] or '-':<9} {(r['user_ref'] or '-')[:17]:<17} "
        f"{r['conversation_id'] or '-':<12} {','.join(sorted(r['findings'])) or '-'}"
    )


HEADER = f"{'seq':>6}  {'time (UTC)':<24}  {'surface':<15} {'verdict':<7} {'outcome':<9} {'finish':<9} {'user':<17} {'conversation':<12} findings"


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    print(HEADER)
    for row in rows:
        print(_line(row))


def tail(args: argparse.Namespace) -> int:
    reader = _reader(args)
    rows = list(reversed(reader.search(_filters(args), limit=args.n)))
    _print(rows, args.json)
    last = rows[-1]["seq"] if rows else 0
    while args.follow:
        time.sleep(1)
        new = [r for r in reversed(reader.search(_filters(args), limit=500)) if r["seq"] > last]
        for row in new:
            print(json.dumps(row, ensure_ascii=False) if args.json else _line(row), flush=True)
            last = row["seq"]
    return 0


def search(args: argparse.Namespace) -> int:
    _print(_reader(args).search(_filters(args), limit=args.limit), args.json)
    return 0


def show(args: argparse.Namespace) -> int:
    row = _reader(args).get(args.ref)
    if row is None:
        print(f"error: no record {args.ref!r}", file=sys.stderr)
        return 1
    print(json.dumps(row, indent=2, ensure_ascii=False))
    return 0


def _directory(args: argparse.Namespace) -> Path:
    return AuditConfig(Path(args.audit_dir) if args.audit_dir else None).home


def verify(args: argparse.Namespace) -> int:
    heads = treehead.read(Path(args.checkpoint)) if args.checkpoint else None
    v = _reader(args).verify(heads)
    if args.json:
        print(json.dumps(v.to_json(), indent=2))
    elif v.ok:
        print(
            f"OK: {v.records} records chained, head {v.head[:16]}…; {v.checkpoints} signed checkpoints, signed through record {v.signed_through}; "
            f"{v.content_checked} contents match their HMACs, {v.content_expired} expired"
        )
        if v.tree_heads_checked:
            print(
                f"OK: the log holds exactly what {v.tree_heads_checked} tree heads from {args.checkpoint} cover (Merkle root {v.tree_root})"
            )
        for note in v.notes:
            print(f"note: {note}")
    else:
        print(f"FAILED at record {v.first_bad_seq}{f' ({v.first_bad_id})' if v.first_bad_id else ''}: {v.problem}")
    return 0 if v.ok else 1


def checkpoints_export(args: argparse.Namespace) -> int:
    """Copy the published tree heads (all, or the newest) somewhere else: the copy is what verify --checkpoint trusts."""
    source = Path(args.from_file) if args.from_file else _directory(args) / "checkpoints.jsonl"
    heads = treehead.read(source)
    if not heads:
        print(f"error: no tree heads in {source}", file=sys.stderr)
        return 1
    chosen = heads[-1:] if args.latest else heads
    Path(args.out).write_text("".join(json.dumps(th, sort_keys=True) + "\n" for th in chosen))
    print(f"wrote {len(chosen)} tree heads (newest: size {chosen[-1]['size']}, root {chosen[-1]['root'][:16]}…) to {args.out}")
    return 0


def prove(args: argparse.Namespace) -> int:
    """An inclusion proof of one record in the tree of `--size` records (default: the whole log)."""
    reader = _reader(args)
    leaves = reader.leaves()
    size = args.size or len(leaves)
    row = reader.get(args.ref)
    if row is None or not 1 <= size <= len(leaves) or row["seq"] > size:
        print(f"error: no record {args.ref!r} in a tree of {size} records", file=sys.stderr)
        return 1
    index = row["seq"] - 1
    proof = merkle.inclusion_proof(index, leaves[:size])
    print(
        json.dumps(
            {
                "seq": row["seq"],
                "leaf_index": index,
                "tree_size": size,
                "leaf_hash": leaves[index].hex(),
                "root": merkle.root(leaves[:size]).hex(),
                "path": [p.hex() for p in proof],
            },
            indent=2,
        )
    )
    return 0


def consistency(args: argparse.Namespace) -> int:
    """A consistency proof that the tree of OLD records is a prefix of the tree of NEW records."""
    leaves = _reader(args).leaves()
    new = args.new or len(leaves)
    if not 1 <= args.old <= new <= len(leaves):
        print(f"error: need 1 <= old <= new <= {len(leaves)}", file=sys.stderr)
        return 1
    proof = merkle.consistency_proof(args.old, leaves[:new])
    print(
        json.dumps(
            {
                "old_size": args.old,
                "new_size": new,
                "old_root": merkle.root(leaves[: args.old]).hex(),
                "new_root": merkle.root(leaves[:new]).hex(),
                "proof": [p.hex() for p in proof],
            },
            indent=2,
        )
    )
    return 0


def export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest = _reader(args).export(out, _filters(args))
    print(f"wrote {manifest['records']} records to {out} (sha256 {manifest['sha256']}) and {out.name}.manifest.json")
    if not manifest["chain"]["verified"]:
        print(f"warning: the chain does not verify: {manifest['chain']['problem']}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="review the audit log: tail, search, show, verify, export")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)

    def common(p: argparse.ArgumentParser, filters: bool = True) -> None:
        p.add_argument("--audit-dir", default=None, help="default: $TANDEM_HOME/audit")
        p.add_argument(
            "--audit-database-url",
            default=None,
            help="the records on PostgreSQL (or TANDEM_AUDIT_DATABASE_URL), as `tandem serve` was given it",
        )
        if filters:
            p.add_argument("--since", help="ISO time or a span back from now (90m, 24h, 7d)")
            p.add_argument("--until", help="ISO time")
            p.add_argument("--surface", choices=["ide_completion", "support_chat"])
            p.add_argument("--verdict", choices=["allow", "flag", "redact", "block"], help="the guard's overall action")
            p.add_argument("--outcome", choices=["ok", "cancelled", "error", "blocked", "refused", "interrupted"])
            p.add_argument("--conversation")
            p.add_argument("--user", help="a user id (matched through its HMAC) or an hmac: reference")
            p.add_argument("--type", help="record type, e.g. llm.interaction")
            p.add_argument("--json", action="store_true", help="one JSON record per line")

    p = audit_sub.add_parser("tail", help="the newest records")
    common(p)
    p.add_argument("-n", type=int, default=20)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=tail)
    p = audit_sub.add_parser("search", help="records matching filters, newest first")
    common(p)
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=search)
    p = audit_sub.add_parser("show", help="one record (by seq or id) with its content")
    common(p, filters=False)
    p.add_argument("ref")
    p.set_defaults(func=show)
    p = audit_sub.add_parser("verify", help="check the hash chain, checkpoints and content; exit 1 naming the first bad record")
    common(p, filters=False)
    p.add_argument("--public-key", help="verify checkpoints with this public key (e.g. a copy kept off the machine)")
    p.add_argument("--checkpoint", help="tree heads kept elsewhere (from `checkpoints export`): catches truncation, rollback and rewriting")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=verify)
    p = audit_sub.add_parser("checkpoints", help="the signed tree heads the server publishes")
    cp_sub = p.add_subparsers(dest="checkpoints_command", required=True)
    p = cp_sub.add_parser("export", help="copy the tree heads elsewhere (the copy is what verify --checkpoint checks against)")
    common(p, filters=False)
    p.add_argument("--from", dest="from_file", help="default: <audit-dir>/checkpoints.jsonl")
    p.add_argument("--latest", action="store_true", help="only the newest head")
    p.add_argument("--out", required=True)
    p.set_defaults(func=checkpoints_export)
    p = audit_sub.add_parser("prove", help="an inclusion proof (RFC 9162) of one record")
    common(p, filters=False)
    p.add_argument("ref", help="seq or id")
    p.add_argument("--size", type=int, help="the tree size to prove against (default: the whole log)")
    p.set_defaults(func=prove)
    p = audit_sub.add_parser("consistency", help="a consistency proof (RFC 9162) between two tree sizes")
    common(p, filters=False)
    p.add_argument("old", type=int)
    p.add_argument("new", type=int, nargs="?")
    p.set_defaults(func=consistency)
    p = audit_sub.add_parser("export", help="JSON Lines plus a manifest (first/last record, sha256)")
    common(p)
    p.add_argument("--out", required=True, help="e.g. audit-2026-11.jsonl")
    p.set_defaults(func=export)
