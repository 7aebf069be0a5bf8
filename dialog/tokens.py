"""Visitor tokens: a visitor only ever reaches their own conversations.

A token is `base64url(claims).base64url(HMAC-SHA256(key, claims))`, claims being the site and a
random visitor id. The key lives beside the chat store (mode 600); rotating it signs everyone out.

The same key, through a derived sub-key, also turns the ids a client picks for its messages
(`client_msg_id`) into the references the store keeps (`client_ref`): a client may put anything in
an id, a secret included, so the store never holds one raw. (A new key also makes the stored
references of earlier messages unmatchable, which does not matter: it signs their senders out.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .files import private_dir


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Visitor:
    site_key: str
    visitor_id: str


class VisitorTokens:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self._ref_key = hmac.new(key, b"tandem-client-msg-id", hashlib.sha256).digest()

    @classmethod
    def load_or_create(cls, path: Path) -> VisitorTokens:
        if not path.exists():
            private_dir(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        elif path.stat().st_mode & 0o077:  # a key someone loosened: readable by its owner only
            os.chmod(path, 0o600)
        return cls(path.read_bytes())

    def issue(self, site_key: str) -> tuple[str, Visitor]:
        visitor = Visitor(site_key, "v_" + secrets.token_hex(12))
        claims = json.dumps({"v": 1, "site": site_key, "sub": visitor.visitor_id, "iat": int(time.time())}, separators=(",", ":")).encode()
        return f"{_b64(claims)}.{_b64(self._sign(claims))}", visitor

    def verify(self, token: str) -> Visitor | None:
        try:
            claims_b64, sig_b64 = token.split(".")
            claims = _unb64(claims_b64)
            if not hmac.compare_digest(_unb64(sig_b64), self._sign(claims)):
                return None
            data = json.loads(claims)
            return Visitor(str(data["site"]), str(data["sub"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None

    def client_ref(self, conversation_id: str, client_msg_id: str) -> str:
        """What the store keeps of a client's message id: a keyed hash (HMAC-SHA256) that stands for
        it in lookups (one per conversation, so the same id in two conversations is not linkable)."""
        data = conversation_id.encode() + b"\0" + client_msg_id.encode("utf-8", "surrogatepass")
        return "ref_" + hmac.new(self._ref_key, data, hashlib.sha256).hexdigest()[:40]

    def _sign(self, claims: bytes) -> bytes:
        return hmac.new(self.key, b"tandem-visitor\0" + claims, hashlib.sha256).digest()
