"""The audit log's two keys, kept beside the database with owner-only permissions.

- an HMAC key: pseudonymises users and IPs and seals content (a keyed hash, so a short or
  guessable value cannot be recovered by hashing candidates, as llm-guard's unkeyed md5 allows);
- an Ed25519 key that signs checkpoints of the chain. Verification needs only the public key,
  which can be copied off the machine (`audit.pub`) and handed to `tandem audit verify --public-key`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def mac(key: bytes, text: str, purpose: str) -> str:
    """`hmac:<hex>` of text, domain-separated by purpose so a user id and a prompt never collide."""
    return "hmac:" + hmac.new(key, purpose.encode() + b"\0" + text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


def public_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def verify_signature(public: Ed25519PublicKey, signature_b64: str, message: bytes) -> bool:
    try:
        public.verify(base64.b64decode(signature_b64), message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class AuditKeys:
    hmac_key: bytes
    signing: Ed25519PrivateKey | None  # None for a reviewer holding only the public key

    @property
    def public(self) -> Ed25519PublicKey:
        assert self.signing is not None
        return self.signing.public_key()

    @classmethod
    def load_or_create(cls, directory: Path, signing_path: Path | None = None) -> AuditKeys:
        """`signing_path` keeps the signing key outside the audit folder, so that someone who can
        rewrite the log there cannot also sign a new head for it."""
        directory.mkdir(parents=True, exist_ok=True)
        hmac_path, pub_path = directory / "hmac.key", directory / "audit.pub"
        sign_path = signing_path or directory / "signing.key"
        sign_path.parent.mkdir(parents=True, exist_ok=True)
        if not hmac_path.exists():
            _write_private(hmac_path, secrets.token_bytes(32))
        if not sign_path.exists():
            key = Ed25519PrivateKey.generate()
            _write_private(
                sign_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            )
        signing = serialization.load_pem_private_key(sign_path.read_bytes(), password=None)
        assert isinstance(signing, Ed25519PrivateKey)
        if not pub_path.exists():
            pub_path.write_bytes(
                signing.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            )
        return cls(hmac_path.read_bytes(), signing)

    def mac(self, text: str, purpose: str) -> str:
        return mac(self.hmac_key, text, purpose)

    def sign(self, message: bytes) -> str:
        assert self.signing is not None
        return base64.b64encode(self.signing.sign(message)).decode()
