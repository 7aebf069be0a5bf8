"""Secret formats on fresh values: a corpus drawn at test time (seeded from os.urandom) of more than a
hundred kinds of secret, each in its service's real format, in code and in prose, sent as every role
in both profiles. Every one must become its typed placeholder, with no fragment left anywhere.

A failure prints the seed; `TANDEM_CORPUS_SEED=<seed> pytest tests/guard/test_guard_formats.py` replays it.
"""

from __future__ import annotations

import json
import os
import random

import pytest

from server.guard import PROFILES, InputGuard, Segment, Verdict
from tests.secrets_corpus import Secret, fresh_corpus

SEED = int(os.environ.get("TANDEM_CORPUS_SEED") or int.from_bytes(os.urandom(8), "big"))
FRESH = fresh_corpus(random.Random(SEED))
ROLES = ("system", "user", "assistant")


def guard(profile: str) -> InputGuard:
    return InputGuard(PROFILES[profile])


def test_the_fresh_corpus_is_large_and_every_kind_is_distinct() -> None:
    kinds = [s.kind for s in FRESH]
    assert len(kinds) >= 60 and len(set(kinds)) == len(kinds)
    assert len({s.type for s in FRESH}) >= 60
    assert len({s.value for s in FRESH}) == len(FRESH)


def leaks(secret: Secret, text: str) -> list[str]:
    return sorted(f for f in secret.fragments() if f in text)


@pytest.mark.parametrize("secret", FRESH, ids=lambda s: s.kind)
def test_every_fresh_secret_becomes_its_placeholder_in_every_role_and_profile(secret: Secret) -> None:
    where = f"(seed {SEED}, kind {secret.kind})"
    for profile in PROFILES:
        for form, text in (("code", secret.in_code()), ("prose", secret.in_prose())):
            start = text.index(secret.value)
            for role in ROLES:
                result = guard(profile).scan([Segment(role, text)])
                assert result.blocked is None, f"{where} {profile} {role} {form}: blocked by {result.blocked.scanner}"
                out = result.segments[0].text
                assert f"[REDACTED:{secret.type}]" in out, f"{where} {profile} {role} {form}: {out}"
                assert not leaks(secret, out), f"{where} {profile} {role} {form}: {leaks(secret, out)} left in {out}"
                report = json.dumps([r.to_json() for r in result.results])
                assert not leaks(secret, report), where
                scanned = {r.scanner: r for r in result.results}["secrets"]
                assert scanned.verdict is Verdict.REDACT
                assert any(f.type == secret.type and f.start < start + len(secret.value) and start < f.end for f in scanned.findings), where


def test_one_conversation_with_every_role_is_redacted_message_by_message() -> None:
    secrets = random.Random(SEED).sample(FRESH, 12)
    for profile in PROFILES:
        segments = [Segment(ROLES[i % 3], s.in_code() if i % 2 else s.in_prose()) for i, s in enumerate(secrets)]
        result = guard(profile).scan(segments)
        assert result.blocked is None
        for secret, seg in zip(secrets, result.segments, strict=True):
            assert f"[REDACTED:{secret.type}]" in seg.text and not leaks(secret, seg.text), f"(seed {SEED}) {secret.kind}: {seg.text}"
