"""A signed-in customer, told to the widget by the site (`Tandem.identify`), verified as Chatwoot's
identity validation does: the site's server computes `HMAC-SHA256(identity secret, identifier)`
(hex) and hands it to the page; Tandem computes it again. The identifier is the customer's `id`
when the site gives one, else their email. A page cannot forge it without the secret, which only
the site's server and Tandem hold. Nothing of the secret or a valid signature is ever stored,
logged or sent back."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass

from server.gateway import redact_secrets

EMAIL = re.compile(r"^[^\s@<>\"]{1,64}@[^\s@<>\"]{1,189}\.[^\s@<>\".]{2,63}$")


class IdentityRefused(ValueError):
    """Who the page says the customer is could not be accepted (the message says why, and never
    holds the secret or the signature)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Contact:
    name: str | None
    email: str | None
    customer_id: str | None
    verified: bool  # signed with the site's identity secret

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> Contact | None:
        return cls(**json.loads(text)) if text else None

    def __str__(self) -> str:
        who = " ".join(x for x in (self.name, f"<{self.email}>" if self.email else None) if x) or "(no name)"
        if self.customer_id:
            who += f" id {self.customer_id}"
        return who + (" (verified)" if self.verified else " (not verified: the site has no identity secret)")


def new_secret() -> str:
    return secrets.token_hex(32)


def signature(secret: str, identifier: str) -> str:
    """What the site's server computes: hex HMAC-SHA256 of the identifier under the site's secret."""
    return hmac.new(secret.encode(), identifier.encode(), hashlib.sha256).hexdigest()


def verify(secret: str | None, name: str | None, email: str | None, customer_id: str | None, mac: str | None) -> Contact:
    """The contact to attach to the conversation, or `IdentityRefused`. A site with an identity
    secret accepts only a valid signature; one without takes the name and email as the visitor's
    word, marked not verified."""
    for field, value, limit in (("name", name, 100), ("email", email, 254), ("id", customer_id, 128)):
        if value is not None and len(value) > limit:
            raise IdentityRefused("identity_invalid", f"{field}: at most {limit} characters")
    if email is not None and not EMAIL.match(email):
        raise IdentityRefused("identity_invalid", "email: not an email address")
    if not (name or email or customer_id):
        raise IdentityRefused("identity_invalid", "identify needs a name, an email or an id")
    verified = False
    if secret is not None:
        identifier = customer_id or email  # exactly as the site's server signed it
        if not identifier:
            raise IdentityRefused("identity_invalid", "this site signs customers by id or email: give one, with its hmac")
        if not mac or not hmac.compare_digest(mac.strip().lower().encode(), signature(secret, identifier).encode()):
            raise IdentityRefused(
                "identity_invalid", "the identity's hmac does not match (signed by the site's server with its identity secret)"
            )
        verified = True
    return Contact(_kept(name), _kept(email), _kept(customer_id), verified)


def _kept(value: str | None) -> str | None:
    """A visitor-supplied field as it may be stored: one line, secrets redacted."""
    return redact_secrets(" ".join(value.split())) or None if value else None
