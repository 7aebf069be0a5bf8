"""The input side of the guard: a profile per surface, and the pipeline that applies it.

Order matters (guard notes, 1.3): the size cap runs first, so no pattern ever runs on an
oversized input; then Unicode controls, secrets, and for chat personal data, template tokens and
injection tripwires. The token budget is not the guard's: the gateway checks it once the prompt
is assembled (a chat's turns fitted, its template rendered), and the engine for what it is sent. Every scanner of the profile reports a verdict; one
that did not run (because an earlier one blocked) says `not_scanned`, never `pass`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import injection, pii, secrets, unicode
from .report import Finding, ScanResult, Span, Verdict, choose, redact

POLICY_VERSION = "2026-12-03"


@dataclass(frozen=True)
class Profile:
    name: str
    max_bytes: int
    strip_invisible: bool  # chat: strip; code: flag only, never rewrite
    pii: bool
    injection: bool
    output_exfil: bool

    @property
    def input_scanners(self) -> list[str]:
        names = ["size", "unicode", "secrets"]
        if self.pii:
            names.append("pii")
        if self.injection:
            names += ["template_tokens", "injection"]
        return names

    @property
    def output_scanners(self) -> list[str]:
        return ["secrets", "remote_images"] if self.output_exfil else ["secrets"]


PROFILES = {
    "ide_completion": Profile(
        "ide_completion", max_bytes=512 * 1024, strip_invisible=False, pii=False, injection=False, output_exfil=False
    ),
    "support_chat": Profile("support_chat", max_bytes=64 * 1024, strip_invisible=True, pii=True, injection=True, output_exfil=True),
}


# the roles whose text comes from the caller, not the deployment: a tool's result, the tools
# offered and an assistant's calls too (`server/tool_calls.py` names the last two)
CALLERS_TEXT = ("user", "assistant", "tool", "tools", "tool_calls")


@dataclass(frozen=True)
class Segment:
    """One piece of caller text: a chat message (role) or a part of a completion prompt."""

    role: str  # "system" | "user" | "assistant" | "code"
    text: str


@dataclass
class Sanitized:
    segments: list[Segment]
    results: list[ScanResult]
    blocked: ScanResult | None = None

    @property
    def scrubbed(self) -> bool:
        """Whether the secret scanner has been over these segments (it has not when a size cap blocked first)."""
        return any(r.scanner == "secrets" and r.verdict is not Verdict.NOT_SCANNED for r in self.results)

    @property
    def redacted(self) -> bool:
        return any(r.verdict is Verdict.REDACT for r in self.results)


@dataclass
class InputGuard:
    """Applies one profile; `special_tokens` are the model's own control tokens (neutralised in chat)."""

    profile: Profile
    special_tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.template_rx: re.Pattern[str] = injection.template_pattern(self.special_tokens)

    def scan(self, segments: list[Segment]) -> Sanitized:
        results: list[ScanResult] = []
        pending = list(self.profile.input_scanners)

        def done(result: ScanResult) -> None:
            results.append(result)
            pending.remove(result.scanner)

        def block(result: ScanResult) -> Sanitized:
            done(result)
            results.extend(ScanResult(name, Verdict.NOT_SCANNED, reason=f"not run: blocked by {result.scanner}") for name in pending)
            return Sanitized(segments, results, result)

        size = sum(len(s.text.encode("utf-8", "surrogatepass")) for s in segments)
        if size > self.profile.max_bytes:
            return block(
                ScanResult(
                    "size", Verdict.BLOCK, reason=f"input is {size} bytes; the {self.profile.name} limit is {self.profile.max_bytes}"
                )
            )
        done(ScanResult("size", Verdict.PASS))

        segments, found = self._each(segments, unicode.find_invisible, rewrite=self.profile.strip_invisible, strip=True)
        done(
            ScanResult(
                "unicode",
                Verdict.FLAG if found else Verdict.PASS,
                found,
                reason="stripped" if found and self.profile.strip_invisible else None,
            )
        )

        segments, found = self._each(segments, lambda t: choose(secrets.find_secrets(t)), rewrite=True)
        done(ScanResult("secrets", Verdict.REDACT if found else Verdict.PASS, found))

        if self.profile.pii:
            segments, found = self._each(segments, lambda t: choose(pii.find_pii(t)), rewrite=True, roles=("user", "assistant", "tool"))
            done(ScanResult("pii", Verdict.REDACT if found else Verdict.PASS, found))

        if self.profile.injection:
            find_tokens = lambda t: [Span(m.start(), m.end(), "template_token") for m in self.template_rx.finditer(t)]  # noqa: E731
            segments, tokens_found = self._each(segments, find_tokens, rewrite=True, strip=True, roles=CALLERS_TEXT)
            done(
                ScanResult(
                    "template_tokens",
                    Verdict.FLAG if tokens_found else Verdict.PASS,
                    tokens_found,
                    reason="neutralised" if tokens_found else None,
                )
            )
            _, wires = self._each(segments, injection.find_tripwires, rewrite=False, roles=("user",))
            if injection.strong_evidence([Span(f.start, f.end, f.type) for f in wires], len(tokens_found)):
                kinds = sorted({f.type for f in wires})
                return block(ScanResult("injection", Verdict.BLOCK, wires, reason="prompt injection: " + ", ".join(kinds)))
            done(ScanResult("injection", Verdict.FLAG if wires else Verdict.PASS, wires))
        return Sanitized(segments, results)

    @staticmethod
    def _each(
        segments: list[Segment], find: Callable[[str], list[Span]], rewrite: bool, strip: bool = False, roles: tuple[str, ...] | None = None
    ) -> tuple[list[Segment], list[Finding]]:
        """Run a finder over every segment (of the given roles); replace (or strip) what it finds."""
        out, findings = [], []
        single = len(segments) == 1
        for i, seg in enumerate(segments):
            spans = find(seg.text) if roles is None or seg.role in roles else []
            for s in spans:
                placeholder = None if strip or not rewrite else s.placeholder
                findings.append(Finding(s.type, s.start, s.end, placeholder, None if single else i))
            if spans and rewrite:
                seg = Segment(seg.role, unicode.strip(seg.text, spans) if strip else redact(seg.text, spans))
            out.append(seg)
        return out, findings
