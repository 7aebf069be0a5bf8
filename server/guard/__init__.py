"""The guard: input sanitisation by surface profile and streaming output scanning.

Rules are plain regexes, checksums and entropy, in memory; nothing here downloads a model."""

from .report import Finding, ScanResult, Span, Verdict, overall
from .sanitize import POLICY_VERSION, PROFILES, InputGuard, Profile, Sanitized, Segment
from .stream import OutputBlocked, OutputScanner

__all__ = [
    "POLICY_VERSION",
    "PROFILES",
    "Finding",
    "InputGuard",
    "OutputBlocked",
    "OutputScanner",
    "Profile",
    "Sanitized",
    "ScanResult",
    "Segment",
    "Span",
    "Verdict",
    "output_scanner",
    "overall",
    "scrub",
    "scrub_header",
]


import re as _re

PRODUCT_TOKEN = _re.compile(
    r"[A-Za-z][A-Za-z_.+-]{0,23}(?:/v?[0-9][0-9A-Za-z.+-]{0,23}|/[A-Za-z][A-Za-z_.+-]{0,23})?"
)  # digits only after a slash
VERSION = _re.compile(r"v?[0-9]{1,4}(?:\.[0-9]{1,6}){0,3}")
VERSION_START = _re.compile(r"v?[0-9]")


def scrub(text: str) -> str:
    """Secrets redacted from a short caller-supplied string before it is recorded."""
    from .report import choose, redact
    from .secrets import find_secrets

    return redact(text, choose(find_secrets(text)))


LONG_WORDS = frozenset({"compatible"})  # the one long bare word in crawlers' User-Agents


def _wordlike(token: str) -> bool:
    """Each letter run reads as a name (`okhttp`, `Gecko`, `AppleWebKit`, `KHTML`), not as a random
    string such as a 16-letter client secret that happens to have no digits. A mixed-case run with
    many capitals is never a name; a run of ten letters or more is one only as a product with its
    version (`PostmanRuntime/7.36.0`), since no letter pattern tells a long name from a secret."""
    name, _, version = token.partition("/")
    for run in _re.findall(r"[A-Za-z]+", token):
        capitals = sum(c.isupper() for c in run)
        if capitals > 3 and not (run.isupper() and len(run) <= 8):
            return False
        if len(run) >= 10 and not (run in name and VERSION_START.match(version)) and run.lower() not in LONG_WORDS:
            return False
    return True


def scrub_header(text: str) -> str:
    """A header (User-Agent, a client name) as it may be recorded. A header can carry a credential
    of any format, so this keeps only what reads as a product description: words, `Product/1.2.3`
    tokens and bare version numbers; every other token becomes a placeholder (and known secrets go
    first, whole)."""
    from .report import choose, redact
    from .secrets import find_secrets

    kept = []
    for token in redact(text, choose(find_secrets(text))).split():
        bare = token.strip("();,")
        if (bare.startswith("[REDACTED:") or (PRODUCT_TOKEN.fullmatch(bare) and _wordlike(bare)) or VERSION.fullmatch(bare)) and len(
            bare
        ) <= 48:
            kept.append(token)
        else:
            kept.append("[REDACTED:opaque]")
    return " ".join(kept)


def output_scanner(profile: Profile) -> OutputScanner:
    from . import exfil, secrets
    from .report import choose

    scanners = {"secrets": lambda t: choose(secrets.find_secrets(t))}
    holds: tuple[_re.Pattern[str], ...] = ()
    if profile.output_exfil:
        scanners["remote_images"] = exfil.find_remote_images
        holds = (exfil.OPEN_IMAGE,)
    return OutputScanner(scanners, holds)
