"""One answer of a call as the gateway lets it out: scanned as it streams, with its tokens'
log-probabilities released only with the text they came from.

The output scanner holds text back (a run that may still grow into a secret) and redacts what it
finds, so a token's logprob entry cannot go out when the engine sends it: its token string would
spell out what the scanner is still holding, or has redacted. Entries wait here until the scanner
has released the raw text they cover; entries whose text it redacted go out as the redaction
marker, with their log-probability but without their text, bytes or alternatives.
"""

from __future__ import annotations

import collections

from .engine import Candidate, TokenLogprob
from .guard import OutputScanner, ScanResult
from .guard.report import SEVERITY, Verdict

REDACTED = "[redacted]"


class Answer:
    def __init__(self, scanner: OutputScanner) -> None:
        self.scanner = scanner
        self.parts: list[str] = []
        self.tokens = 0
        self.chunks = 0
        self.finish: str | None = None
        self._raw = 0  # raw characters fed to the scanner
        self._held: collections.deque[tuple[int, int, tuple[TokenLogprob, ...]]] = collections.deque()  # (raw start, end, entries)

    def feed(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> tuple[str, tuple[TokenLogprob, ...]]:
        """Raw model text in; the text safe to send now, and the logprob entries released with it."""
        start = self._raw
        self._raw += len(text)
        if logprobs:
            self._held.append((start, self._raw, logprobs))
        return self.scanner.feed(text), self._release()

    def finish_text(self) -> tuple[str, tuple[TokenLogprob, ...]]:
        """At the end: the rest of the text, and every entry still held."""
        return self.scanner.finish(), self._release()

    def keep(self, text: str, tokens: int, finish: str | None) -> None:
        """What went out, for the audit record."""
        self.tokens = tokens
        if text:
            self.parts.append(text)
            self.chunks += 1
        if finish is not None:
            self.finish = finish

    def text(self) -> str:
        return "".join(self.parts)

    def _release(self) -> tuple[TokenLogprob, ...]:
        released = self.scanner.consumed if not self.scanner.finished else self._raw
        out: list[TokenLogprob] = []
        while self._held and self._held[0][1] <= released:
            start, end, entries = self._held.popleft()
            if self._redacted(start, end):
                entries = tuple(_masked(e) for e in entries)
            out.extend(entries)
        return tuple(out)

    def _redacted(self, start: int, end: int) -> bool:
        return any(f.start < max(end, start + 1) and f.end > start for found in self.scanner.findings.values() for f in found)


def _masked(entry: TokenLogprob) -> TokenLogprob:
    return TokenLogprob(Candidate(-1, REDACTED, b"", entry.chosen.logprob))


def merged_results(answers: list[Answer]) -> list[ScanResult]:
    """The output scanners' results over several answers (n > 1): per scanner, the most severe
    verdict and every finding."""
    by_name: dict[str, ScanResult] = {}
    for answer in answers:
        for r in answer.scanner.results():
            seen = by_name.get(r.scanner)
            if seen is None:
                by_name[r.scanner] = ScanResult(r.scanner, r.verdict, list(r.findings), r.reason)
                continue
            worse = max(seen, r, key=lambda x: (SEVERITY[x.verdict], x.verdict is Verdict.NOT_SCANNED))  # unscanned outranks a pass
            by_name[r.scanner] = ScanResult(r.scanner, worse.verdict, seen.findings + list(r.findings), worse.reason)
    return list(by_name.values())
