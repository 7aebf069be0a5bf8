"""Signed tree heads: the audit log's state (size, Merkle root, chain head, time) signed by the
server and published outside the database as it moves, one JSON line per committed batch.

A copy of these lines kept elsewhere (`tandem audit checkpoints export`, or a witness) is what
`tandem audit verify --checkpoint FILE` checks the database against: a log that lost records,
was replaced by an older copy, had its tail rewritten or a record appended after the last head
no longer matches a head it once published, and without the signing key no new head can be made.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .keys import AuditKeys, public_key_id, verify_signature

ORIGIN = "tandem-audit/tree/v1"


def tree_head_text(size: int, root: str, head: str, ts: str) -> bytes:
    """What is signed: C2SP tlog-checkpoint's origin, size and base64 root lines, then the chain head and time."""
    root_b64 = base64.b64encode(bytes.fromhex(root)).decode()
    return f"{ORIGIN}\n{size}\n{root_b64}\nchain {head}\ntime {ts}\n".encode()


def sign(keys: AuditKeys, size: int, root: str, head: str, ts: str) -> dict[str, Any]:
    return {
        "origin": ORIGIN,
        "size": size,
        "root": root,
        "head": head,
        "ts": ts,
        "key_id": public_key_id(keys.public),
        "sig": keys.sign(tree_head_text(size, root, head, ts)),
    }


def valid(public: Ed25519PublicKey, th: dict[str, Any]) -> bool:
    try:
        text = tree_head_text(int(th["size"]), str(th["root"]), str(th["head"]), str(th["ts"]))
    except (KeyError, TypeError, ValueError):
        return False
    return th.get("origin") == ORIGIN and verify_signature(public, str(th.get("sig", "")), text)


def publish(path: Path, th: dict[str, Any]) -> None:
    """Append one head and make it durable (the file is the operator's alone)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(th, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    """Every well-formed head in a file of them (a line torn by a crash is skipped)."""
    heads = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            th = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(th, dict) and isinstance(th.get("size"), int):
            heads.append(th)
    return heads
