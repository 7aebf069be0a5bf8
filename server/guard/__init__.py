"""The guard: input sanitisation by surface profile and streaming output scanning.

Rules are plain regexes, checksums and entropy, in memory; nothing here downloads a model."""

from .report import Finding, ScanResult, Span, Verdict, overall
from .sanitize import POLICY_VERSION, PROFILES, InputGuard, Profile, Sanitized, Segment
from .stream import OutputBlocked, OutputScanner

__all__ = ["POLICY_VERSION", "PROFILES", "Finding", "InputGuard", "OutputBlocked", "OutputScanner", "Profile", "Sanitized",
           "ScanResult", "Segment", "Span", "Verdict", "output_scanner", "overall", "scrub"]


def scrub(text: str) -> str:
    """Secrets redacted from a short caller-supplied string (a User-Agent, a client name) before it is recorded."""
    from .report import choose, redact
    from .secrets import find_secrets

    return redact(text, choose(find_secrets(text)))


def output_scanner(profile: Profile) -> OutputScanner:
    from . import exfil, secrets
    from .report import choose

    scanners = {"secrets": lambda t: choose(secrets.find_secrets(t))}
    holds = ()
    if profile.output_exfil:
        scanners["remote_images"] = exfil.find_remote_images
        holds = (exfil.OPEN_IMAGE,)
    return OutputScanner(scanners, holds)
