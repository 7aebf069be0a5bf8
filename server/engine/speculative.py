"""Prompt-lookup drafts for speculative decoding of greedy rows.

Code completion often copies what is already in the window (a name, a call, a line written
above), so the tokens that followed the latest earlier occurrence of a row's last few tokens are
a cheap guess at what comes next. The engine verifies all of a row's guesses in one forward pass
(`RunningBatch.verify`) and keeps the longest prefix that greedy decoding would have produced,
plus the model's own next token after it, so the output is the same as plain greedy decoding.

Why not transformers' `PromptLookupCandidateGenerator`: it takes the first (oldest) match and
rebuilds sliding windows over the whole sequence, as a tensor of batch size 1, at every step.
Here each row keeps an index of its n-grams in a dict, updated with each new token, so a draft is
a few dict lookups on the row's Python list of ids, and it takes the most recent match, which in
code is the nearer and likelier one.
"""

from __future__ import annotations

MAX_NGRAM = 3  # the longest suffix looked up; shorter ones are tried when it has no earlier occurrence
DRAFT_TOKENS = 8  # drafts proposed per row and step (`tandem bench --sections speculative` measures the choice)
# Speculate only while the running batch has at most this many rows: a verification pass costs
# (1 + drafts) positions per row, attended query by query (fast_decode._attend_each); from four
# rows on it costs more than the drafts give back in fp32, and from two with int8 products.
# Set from `tandem bench --sections speculative`, whose output quotes the measurement.
SPEC_MAX_ROWS = 1
# Whether a row's drafts are worth verifying is measured, not assumed: a verification pass costs
# more than a plain step (at one row, more than the compiled one), so a row verifies only while
# the drafts it has been proposing lately (verified or not: unverified ones are scored against the
# tokens the plain steps then give) would have gained more tokens per step than the engine's
# measured verification costs over a plain step. GAIN_ALPHA: how fast that record follows the text.
GAIN_ALPHA = 0.3
OPENING_GAIN = 2.0  # a new row's record: it verifies its first drafts, and so gets measured


class PromptLookup:
    """A row's token ids (prompt, then everything generated) and where each n-gram last ended."""

    def __init__(self, ids: list[int], max_ngram: int = MAX_NGRAM) -> None:
        self.ids = list(ids)
        self.max_ngram = max_ngram
        self._last_end: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram)]  # [n - 1]: n-gram -> its last end index
        self._indexed = 0  # n-grams ending before this index are in _last_end

    def append(self, token: int) -> None:
        self.ids.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the last n ids (n from
        max_ngram down to 1); none when there is none, or k < 1."""
        ids = self.ids
        end = len(ids) - 1  # the last id: n-grams ending here are the ones looked up, so not indexed yet
        for e in range(self._indexed, end):
            for n in range(1, min(self.max_ngram, e + 1) + 1):
                self._last_end[n - 1][tuple(ids[e - n + 1 : e + 1])] = e
        self._indexed = max(self._indexed, end)
        if k < 1:
            return []
        for n in range(min(self.max_ngram, len(ids)), 0, -1):
            found = self._last_end[n - 1].get(tuple(ids[len(ids) - n :]))
            if found is not None:
                return ids[found + 1 : found + 1 + k]
        return []


class Gate:
    """A row's record of how many of its drafts the model would have accepted, per draft."""

    def __init__(self) -> None:
        self.gain = OPENING_GAIN
        self.shadow: list[int] = []  # an unverified draft being scored against the coming tokens
        self._matched = 0

    def record(self, accepted: int) -> None:
        self.gain = (1 - GAIN_ALPHA) * self.gain + GAIN_ALPHA * accepted

    def watch(self, draft: list[int]) -> None:
        """Score `draft` against the next tokens (unless one is being scored already)."""
        if not self.shadow and draft:
            self.shadow, self._matched = draft, 0

    def token(self, token: int) -> None:
        if not self.shadow:
            return
        if token == self.shadow[self._matched]:
            self._matched += 1
            if self._matched < len(self.shadow):
                return
        self.record(self._matched)
        self.shadow = []


def accepted_prefix(drafts: list[int], chosen: list[int | None]) -> int:
    """How many drafts the model agrees with: chosen[i] is its token after the row's next token
    and drafts[:i]; a draft counts while it equals that token."""
    m = 0
    while m < len(drafts) and chosen[m] == drafts[m]:
        m += 1
    return m
