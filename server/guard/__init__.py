"""The guard: input sanitisation by surface profile and streaming output scanning.

Rules are plain regexes, checksums and entropy, in memory; nothing here downloads a model."""

from .report import Finding, ScanResult, Span, Verdict, overall
from .sanitize import POLICY_VERSION, PROFILES, InputGuard, Profile, Sanitized, Segment
from .stream import OutputBlocked, OutputScanner

__all__ = ["POLICY_VERSION", "PROFILES", "Finding", "InputGuard", "OutputBlocked", "OutputScanner", "Profile", "Sanitized",
           "ScanResult", "Segment", "Span", "Verdict", "output_scanner", "overall", "scrub", "scrub_header"]


def scrub(text: str) -> str:
    """Secrets redacted from a short caller-supplied string before it is recorded."""
    from .report import choose, redact
    from .secrets import find_secrets

    return redact(text, choose(find_secrets(text)))


def scrub_header(text: str) -> str:
    """A header (User-Agent, a client name) as it may be recorded: known secrets redacted, and any
    other long random-looking token too, since a header can carry a credential of any format;
    `Product/1.2.3` tokens stay readable."""
    import re

    from .report import Span, choose, redact
    from .secrets import entropy, find_secrets

    spans = find_secrets(text)
    for m in re.finditer(r"[A-Za-z0-9_\-+/=~.]{20,}", text):
        token = m.group()
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-.]*/v?[0-9][0-9A-Za-z.\-]*", token):
            continue
        if entropy(token) >= 3.5 and any(c.isdigit() for c in token) and any(c.isalpha() for c in token):
            spans.append(Span(m.start(), m.end(), "opaque_token", 3))
    return redact(text, choose(spans))


def output_scanner(profile: Profile) -> OutputScanner:
    from . import exfil, secrets
    from .report import choose

    scanners = {"secrets": lambda t: choose(secrets.find_secrets(t))}
    holds = ()
    if profile.output_exfil:
        scanners["remote_images"] = exfil.find_remote_images
        holds = (exfil.OPEN_IMAGE,)
    return OutputScanner(scanners, holds)
