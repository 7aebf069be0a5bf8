"""What a scanner says about a text: a verdict and findings that locate, but never repeat, what it found.

Findings carry a type, offsets in the text as it was scanned and the placeholder that replaced
it, so a reviewer can see what was done without the audit log ever holding the secret itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Verdict(str, enum.Enum):
    PASS = "pass"
    REDACT = "redact"
    FLAG = "flag"
    BLOCK = "block"
    NOT_SCANNED = "not_scanned"  # the scanner belongs to the profile but did not run: never a silent pass


SEVERITY = {Verdict.NOT_SCANNED: 0, Verdict.PASS: 0, Verdict.FLAG: 1, Verdict.REDACT: 2, Verdict.BLOCK: 3}


@dataclass(frozen=True)
class Span:
    """A stretch of text a rule matched. `priority`: lower wins when two spans overlap."""

    start: int
    end: int
    type: str
    priority: int = 0

    @property
    def placeholder(self) -> str:
        return f"[REDACTED:{self.type}]"


@dataclass(frozen=True)
class Finding:
    type: str
    start: int
    end: int
    placeholder: str | None = None  # set when the text was replaced
    segment: int | None = None  # which chat message (None for a single text)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "start": self.start, "end": self.end}
        if self.placeholder:
            out["placeholder"] = self.placeholder
        if self.segment is not None:
            out["segment"] = self.segment
        return out


@dataclass
class ScanResult:
    scanner: str
    verdict: Verdict
    findings: list[Finding] = field(default_factory=list)
    reason: str | None = None  # why it blocked, or why it did not run

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scanner": self.scanner, "verdict": self.verdict.value, "findings": [f.to_json() for f in self.findings]}
        if self.reason:
            out["reason"] = self.reason
        return out


def overall(results: list[ScanResult]) -> str:
    """The action the guard took as a whole: allow, flag, redact or block."""
    worst = max((SEVERITY[r.verdict] for r in results), default=0)
    return {0: "allow", 1: "flag", 2: "redact", 3: "block"}[worst]


def choose(spans: list[Span]) -> list[Span]:
    """Non-overlapping spans, preferring the more specific rule (lower priority), then the longer match."""
    chosen: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.priority, -(s.end - s.start), s.start)):
        if all(span.end <= c.start or span.start >= c.end for c in chosen):
            chosen.append(span)
    return sorted(chosen, key=lambda s: s.start)


def redact(text: str, spans: list[Span]) -> str:
    """Replace each (non-overlapping, sorted) span with its typed placeholder."""
    parts, at = [], 0
    for span in spans:
        parts.append(text[at : span.start])
        parts.append(span.placeholder)
        at = span.end
    parts.append(text[at:])
    return "".join(parts)
