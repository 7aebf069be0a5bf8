"""Output scanning while the answer streams.

Matching chunk by chunk misses a secret split across tokens (LiteLLM #41611), and re-scanning
the whole output after every chunk costs O(n^2) (llm-guard's streaming example). This keeps a
rolling buffer instead: text is released only up to the start of the last whitespace-free run
(secrets have no spaces) or of an unfinished construct (a private-key block, an image link),
and the rules run over the released tail plus the pending text, so a keyword already sent
("Bearer ", "password is ") still gives context. If a match ever reaches back into text that
was already sent (a run longer than the buffer), the stream ends with an explicit error
rather than a silent cut.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .report import Finding, ScanResult, Span, Verdict, choose, redact
from .secrets import OPEN_PRIVATE_KEY

CONTEXT_CHARS = 256  # released text kept as left context for the rules (more after a forced release)
HOLD_LIMIT = 4096  # longest run held back before it must be released
OPEN_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:(?!-----END)[\s\S])*$")
TRAILING_RUN = re.compile(r"(?<!\S)\S+$")  # the lookbehind anchors each try at a run start: linear, where \S+$ is quadratic


class OutputBlocked(Exception):
    """A rule matched text that had already been sent; the stream must end with an error."""

    def __init__(self, scanner: str, finding_type: str) -> None:
        super().__init__(f"output blocked by the {scanner} scanner ({finding_type})")
        self.scanner, self.finding_type = scanner, finding_type


class OutputScanner:
    """Feed raw text in, get safe text out. `scanners` maps a scanner name to its span finder;
    `holds` are patterns of unfinished constructs to keep back."""

    def __init__(self, scanners: dict[str, Callable[[str], list[Span]]], holds: tuple[re.Pattern[str], ...] = ()) -> None:
        self.scanners = scanners
        self.holds = (OPEN_KEY, *holds)
        self.pending = ""
        self.tail = ""  # last released characters
        self.consumed = 0  # raw characters released so far
        self.findings: dict[str, list[Finding]] = {name: [] for name in scanners}
        self.blocked: OutputBlocked | None = None
        self.finished = False

    def feed(self, text: str) -> str:
        self.pending += text
        return self._release(final=False)

    def finish(self) -> str:
        self.finished = True
        return self._release(final=True)

    def results(self) -> list[ScanResult]:
        out = []
        for name, found in self.findings.items():
            if self.blocked is not None and self.blocked.scanner == name:
                out.append(ScanResult(name, Verdict.BLOCK, found, reason=str(self.blocked)))
            elif not self.finished and self.blocked is None:
                out.append(
                    ScanResult(name, Verdict.REDACT if found else Verdict.NOT_SCANNED, found, reason="stream ended before the final scan")
                )
            else:
                out.append(ScanResult(name, Verdict.REDACT if found else Verdict.PASS, found))
        return out

    def _hold_from(self) -> int:
        """Where the text that may still grow into a match begins."""
        hold = len(self.pending)
        run = TRAILING_RUN.search(self.pending)
        if run:
            hold = run.start()
        for rx in self.holds:
            m = rx.search(self.pending)
            if m:
                hold = min(hold, m.start())
        return max(hold, len(self.pending) - HOLD_LIMIT)

    def _release(self, final: bool) -> str:
        hold = len(self.pending) if final else self._hold_from()
        window, off = self.tail + self.pending, len(self.tail)
        spans: list[tuple[str, Span]] = []
        for name, find in self.scanners.items():
            spans += [(name, s) for s in find(window)]
        if final:
            spans += [("secrets", Span(m.start(), m.end(), "private_key")) for m in OPEN_PRIVATE_KEY.finditer(window) if m.start() >= off]
        kept = {id(s) for s in choose([s for _, s in spans])}
        chosen = sorted(((n, s) for n, s in spans if id(s) in kept), key=lambda p: p[1].start)
        released: list[Span] = []
        for name, span in chosen:
            if span.end <= off:
                continue  # wholly inside text already released (and already clean)
            if span.start < off:
                self.blocked = OutputBlocked(name, span.type)
                raise self.blocked
            start, end = span.start - off, span.end - off
            if end > hold or (not final and end == len(self.pending)):
                hold = min(hold, start)  # may still grow: keep it back
                continue
            released.append(Span(start, end, span.type))
            self.findings[name].append(Finding(span.type, self.consumed + start, self.consumed + end, span.placeholder))
        out = redact(self.pending[:hold], released)
        self.consumed += hold
        self.pending = self.pending[hold:]
        self.tail = self._context(self.tail + out)
        return out

    @staticmethod
    def _context(released: str) -> str:
        """The left context to keep: 256 characters, or, after a run too long to hold was let go,
        that whole run (so a match that completes later is seen to reach into sent text)."""
        run = TRAILING_RUN.search(released)
        keep = max(CONTEXT_CHARS, min(len(run.group(0)) if run else 0, 2 * HOLD_LIMIT))
        return released[-keep:]
