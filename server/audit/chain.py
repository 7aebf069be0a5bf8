"""The hash chain: canonical JSON, record hashes, checkpoint text.

`hash = sha256(prev_hash ‖ "\n" ‖ canonical_json(envelope))`, hex. Canonical JSON has sorted keys,
no insignificant whitespace and UTF-8 (RFC 8785 in spirit; the envelopes hold no floats that
would need its number rules beyond Python's shortest repr). Checkpoints sign the C2SP
tlog-checkpoint body `origin\nsize\nhead\n`, plus the previous checkpoint's signature, so
checkpoints form a chain of their own (as CloudTrail digests do).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

GENESIS = "0" * 64
ORIGIN = "tandem-audit/v1"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def record_hash(prev_hash: str, envelope_json: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + envelope_json).hexdigest()


def checkpoint_text(seq: int, head: str, prev_sig: str) -> bytes:
    return f"{ORIGIN}\n{seq}\n{head}\n{prev_sig}\n".encode()


def ulid() -> str:
    """A time-sortable id (ULID: 48-bit milliseconds, 80 random bits, Crockford base32)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))
