"""Every pattern of the guard runs in linear time (issue 15: a 276 KB prompt once took 88 s to scan).

For each pattern we build adversarial inputs from the characters and literals it accepts (its
hints, runs of its classes, repeated keywords and separators), find the slowest, and check that
at the profile's maximum size it stays well inside a generous bound and that doubling the input
does not much more than double the time (medians of a few runs: these run on slow shared cores).
"""

from __future__ import annotations

import functools
import gc
import re
import statistics
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from server.guard import PROFILES, InputGuard, Profile, Segment, exfil, injection, pii, secrets, stream, unicode

IDE_MAX = PROFILES["ide_completion"].max_bytes  # 512 KiB
CHAT_MAX = PROFILES["support_chat"].max_bytes  # 64 KiB
BOUND_S = 5.0  # for a whole scan of a max-size input, on a slow shared core
PROBE = 8 * 1024  # size at which each candidate input is tried, to find a pattern's slowest

CHARS = list("aA0fZ \n\t-_./+=:@~%|\"'![(<\\")
PAIRS = [
    "aA0",
    "a-",
    "a.",
    "a ",
    "a=",
    "a:",
    "a/",
    "a+",
    "0-",
    "0.",
    "0 ",
    "0:",
    "A-",
    "a\n",
    "a_",
    "a~",
    "a%",
    "a@",
    "1 ",
    "11 ",
    "11-",
    "+1",
    "(1)",
]
KNOWN = [  # shapes that made (or could make) the old patterns backtrack
    "token",
    "tokentoken=",
    "password",
    "password is ",
    "password for ",
    "secret:",
    'api_key="',
    "key=",
    "key=.",
    "key=a.",
    "pwd=",
    "https://a:",
    "https://a:b",
    "postgres://a:",
    "postgres://a:b",
    "://",
    "a@",
    "a@a.",
    "@a",
    "-----BEGIN PRIVATE KEY-----",
    "-----BEGIN A",
    "-----BEGIN A ",
    "-----END PRIVATE KEY-----",
    "-----",
    "eyJ",
    "eyJaaaaaaaaa.",
    "eyJaaaaaaaaa.eyJaaaaaaaa.",
    "bearer ",
    "Bearer a",
    "basic ",
    "basic aaaaaaaa=",
    "sk-",
    "T3BlbkFJ",
    "sk-aaaaaaaaaaaaaaaaT3BlbkFJ",
    "xoxb-",
    "xoxb-1234567890-",
    "ignore ",
    "ignore the ",
    "reveal ",
    "you are now ",
    "pretend to be ",
    "![",
    "![a](//",
    "![a](//a ",
    "<img ",
    "<img src=//",
    "<img src=",
    "DE89",
    "AKIA",
    "aws_secret_key=",
    "AccountKey=",
    "1234567890:AA",
    "sig=",
    "sv=1&sig=",
    "abc1Q~",
    "Authorization: ",
    "authorization: token ",
    "curl ",
    "curl -u a:",
    "curl \\\n",
    "cloudflare ",
    "cloudflare=",
    "twilio auth_token ",
    "datadog ",
    "vault s.",
    "M" + "a" * 23 + ".",
    "Maaaaaaaaaaaaaaaaaaaaaaaa.aaaaaa.",
    "ZXlK",
    "sl.",
    "glpat-",
    "glpat-aaaaaaaaaaaaaaaaaaaa.",
    "pat-na1-",
    '<add key="Password" value="',
]
FILLERS = ["", "a", "A0", " ", "=", "-", ".", ":", "/", "0", "aA0-_"]


def units_for(hints: tuple[str, ...]) -> list[str]:
    """A rule's literals followed by each filler (and in upper case too: a lower-case hint may be matched in any case)."""
    out = []
    for h in hints[:4]:
        for v in dict.fromkeys((h, h.upper())):
            out += [v + f for f in FILLERS]
    return out


def grow(unit: str, size: int, tail: str = "") -> str:
    return (unit * (size // len(unit) + 1))[: size - len(tail)] + tail


def median_time(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


TAILS = ("", "_", "-----END PRIVATE KEY-----")  # the last: a key's end after many unfinished starts


def slowest(run: Callable[[str], object], units: list[str]) -> tuple[str, str]:
    """The unit whose repetition this pattern is slowest on (at PROBE size), and with which tail."""
    timed = []
    for unit in dict.fromkeys(units):
        for tail in TAILS if "-----" in unit else TAILS[:2]:
            text = grow(unit, PROBE, tail)
            timed.append((median_time(functools.partial(run, text), 1), unit, tail))
    return max(timed)[1:]


def ratio(run: Callable[[str], object], small: str, large: str, runs: int) -> tuple[float, float]:
    """Median times of `small` and `large`, measured in turn so that a slow spell of the machine hits both."""
    one, two = [], []
    for _ in range(runs):
        one.append(median_time(lambda: run(small), 1))
        two.append(median_time(lambda: run(large), 1))
    return statistics.median(one), statistics.median(two)


def check_linear(run: Callable[[str], object], units: list[str], size: int) -> None:
    """The slowest input stays under the bound at `size`, and twice a quarter of it takes < 3x the time."""
    unit, tail = slowest(run, units)
    gc.disable()
    try:
        at_max = median_time(lambda: run(grow(unit, size, tail)), 1)
        assert at_max < BOUND_S, f"{at_max:.2f} s on {size} bytes of {unit!r}"
        small, large = grow(unit, size // 4, tail), grow(unit, size // 2, tail)
        floor = 0.01  # below this, timer noise dominates the ratio
        for runs in (3, 7):  # a second, longer try before calling a noisy machine's result a failure
            one, two = ratio(run, small, large, runs)
            if max(two, floor) < 3 * max(one, floor):
                break
        assert max(two, floor) < 3 * max(one, floor), f"{unit!r}: {one:.3f} s for {size // 4} bytes, {two:.3f} s for twice that: not linear"
    finally:
        gc.enable()


COMMON = CHARS + PAIRS + KNOWN


@pytest.mark.parametrize("index", range(len(secrets.RULES)), ids=lambda i: f"{i}-{secrets.RULES[i].type}")
def test_each_secret_rule_is_linear_at_the_ide_maximum(index) -> None:
    rule = secrets.RULES[index]
    check_linear(lambda t: secrets.find_secrets(t, (rule,)), COMMON + units_for(rule.hints), IDE_MAX)


def module_patterns() -> dict[str, tuple[re.Pattern[str], int]]:
    """Every compiled pattern of the guard's modules (module-level, or in a module-level dict), with the
    size of text it runs on: the ide maximum for secrets, the chat maximum for chat-only scanners and output."""
    found: dict[str, tuple[re.Pattern[str], int]] = {}
    # the stream's hold patterns run on the held-back text only, which is never much longer than HOLD_LIMIT
    for module, size in ((secrets, IDE_MAX), (pii, CHAT_MAX), (injection, CHAT_MAX), (exfil, CHAT_MAX), (stream, 2 * stream.HOLD_LIMIT)):
        short = module.__name__.rsplit(".", 1)[-1]
        for name, value in vars(module).items():
            if isinstance(value, re.Pattern):
                found[f"{short}.{name}"] = (value, size)
            elif isinstance(value, dict):
                found.update({f"{short}.{name}[{k}]": (v, size) for k, v in value.items() if isinstance(v, re.Pattern)})
    found["injection.template_pattern"] = (injection.template_pattern(["<|fim_prefix|>", "<|fim_suffix|>"]), CHAT_MAX)
    return found


OTHER_PATTERNS = module_patterns()


# Known and not ours to change here (server/guard/stream.py): `\S+$` is tried from every character of a
# long run that is followed by white space, O(n^2) in the run; `(?<!\S)\S+$` finds the same run in O(n).
# The stream applies it to its held-back text only (a few KiB), so a long run costs a fraction of a second.
KNOWN_QUADRATIC: dict[str, str] = {}  # name -> why, for a pattern known to be super-linear (strict xfail until fixed)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_QUADRATIC[n])) if n in KNOWN_QUADRATIC else n
        for n in sorted(OTHER_PATTERNS)
    ],
)
def test_each_other_guard_pattern_is_linear(name) -> None:
    rx, size = OTHER_PATTERNS[name]
    literals = tuple(dict.fromkeys(re.findall(r"[A-Za-z][A-Za-z ]{2,}|[<!\[|@+:/\-]{1,3}", rx.pattern)))[:12]
    check_linear(lambda t: list(rx.finditer(t)), COMMON + units_for(literals), size)


def test_the_finders_of_other_modules_are_linear() -> None:
    for find, size in (
        (pii.find_pii, CHAT_MAX),
        (injection.find_tripwires, CHAT_MAX),
        (exfil.find_remote_images, CHAT_MAX),
        (unicode.find_invisible, CHAT_MAX),
    ):
        check_linear(find, COMMON + ["\u200b", "a\u202e", "\U000e0041", "\U0001f468\u200d"], size)


def big_guard(profile: str, factor: int = 1) -> InputGuard:
    base = PROFILES[profile]
    wide = Profile(base.name, base.max_bytes * factor, base.strip_invisible, base.pii, base.injection, base.output_exfil)
    return InputGuard(wide)


MIXED = list(dict.fromkeys(COMMON + [h + f for r in secrets.RULES for h in r.hints[:1] for f in ("a", "=", " ")]))


def mixture(size: int) -> str:
    """Every adversarial unit in turn (the common ones, and each rule's first hint with a filler), each
    repeated over an equal block."""
    return "".join(grow(u, size // len(MIXED)) for u in MIXED).ljust(size, "a")


ADVERSARIAL = ["token", "password", "-----BEGIN PRIVATE KEY-----", "https://a:", "key=.", "cloudflare ", "<img src=//", "![a](//", "a", " "]


@pytest.mark.parametrize("profile, role", [("ide_completion", "code"), ("support_chat", "user"), ("support_chat", "assistant")])
def test_a_whole_scan_of_a_max_size_adversarial_input_is_fast_and_linear(profile, role) -> None:
    size = PROFILES[profile].max_bytes
    guard, double = big_guard(profile), big_guard(profile, 2)
    for text in [mixture(size)] + [grow(u, size) for u in ADVERSARIAL]:
        took = median_time(functools.partial(guard.scan, [Segment(role, text)]), 1)
        assert took < BOUND_S, f"{took:.2f} s to scan {size} bytes of {text[:40]!r}..."
    one_text, two_text = mixture(size), mixture(2 * size)
    one, two = ratio(lambda t: (guard if len(t) <= size else double).scan([Segment(role, t)]), one_text, two_text, 3)
    assert two < 3 * max(one, 0.02), (one, two)


SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


def test_a_max_size_scan_of_real_source_is_fast() -> None:
    parts, size = [], 0
    for path in sorted(SITE_PACKAGES.rglob("*.py")):
        parts.append(path.read_text(encoding="utf-8", errors="replace"))
        size += len(parts[-1])
        if size > IDE_MAX:
            break
    text = "".join(parts).encode()[:IDE_MAX].decode("utf-8", "ignore")
    guard = big_guard("ide_completion")
    assert median_time(lambda: guard.scan([Segment("code", text)])) < BOUND_S / 2
