"""`tandem guard bench`: how well the injection tripwires tell attacks from ordinary questions.

Runs the real input guard of the support_chat profile (as `tandem guard scan` does: no tokenizer,
no token limit) over two corpora, each line one user message: well-known injections and
jailbreaks, and ordinary support questions full of the same trigger words
(tests/corpora/injections.txt and benign_support.txt, sources in their headers). It prints, per
corpus, how many messages were blocked, flagged and passed, the rates that matter (detection and
block rate on the injections, false-block and false-flag rate on the ordinary questions), which
tripwires fired how often, and the median time of a scan; and writes it all to guard-bench.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from .report import Verdict
from .sanitize import POLICY_VERSION, PROFILES, InputGuard, Segment

CORPORA = Path(__file__).resolve().parents[2] / "tests" / "corpora"
PROFILE = "support_chat"


def load_corpus(path: Path) -> list[str]:
    """One message a line; a literal `\\n` is a line break. Comments start with "# " (so "### SYSTEM:" is a
    message); blank lines are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.replace("\\n", "\n") for line in lines if line.strip() and not (line.startswith("# ") or line == "#")]


def measure(messages: list[str], guard: InputGuard) -> dict[str, Any]:
    """Scan each message as one user segment: counts by outcome, tripwire counts, timings, and each message's outcome."""
    counts = {"blocked": 0, "flagged": 0, "passed": 0}
    tripwires: dict[str, int] = {}
    times_ms, outcomes = [], []
    for text in messages:
        start = time.perf_counter()
        sanitized = guard.scan([Segment("user", text)])
        times_ms.append((time.perf_counter() - start) * 1000)
        injection = next(r for r in sanitized.results if r.scanner == "injection")
        if sanitized.blocked is not None:
            outcome = "blocked"
        elif injection.verdict is Verdict.FLAG:
            outcome = "flagged"
        else:
            outcome = "passed"
        counts[outcome] += 1
        kinds = sorted({f.type for f in injection.findings})
        for kind in kinds:
            tripwires[kind] = tripwires.get(kind, 0) + 1
        outcomes.append({"outcome": outcome, "tripwires": kinds, "text": text[:200]})
    return {
        "messages": len(messages),
        **counts,
        "tripwires": dict(sorted(tripwires.items())),
        "median_ms": round(statistics.median(times_ms), 3) if times_ms else 0.0,
        "max_ms": round(max(times_ms), 3) if times_ms else 0.0,
        "outcomes": outcomes,
    }


def rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def run(injections: list[str], benign: list[str]) -> dict[str, Any]:
    guard = InputGuard(PROFILES[PROFILE])
    inj, ben = measure(injections, guard), measure(benign, guard)
    return {
        "profile": PROFILE,
        "policy_version": POLICY_VERSION,
        "corpora": {"injections": inj, "benign": ben},
        "rates": {
            "detection": rate(inj["blocked"] + inj["flagged"], inj["messages"]),
            "block_on_injections": rate(inj["blocked"], inj["messages"]),
            "false_block_on_benign": rate(ben["blocked"], ben["messages"]),
            "false_flag_on_benign": rate(ben["flagged"], ben["messages"]),
        },
    }


def table(report: dict[str, Any]) -> str:
    inj, ben = report["corpora"]["injections"], report["corpora"]["benign"]
    rates = report["rates"]
    rows = [f"{'corpus':<12} {'messages':>8} {'blocked':>8} {'flagged':>8} {'passed':>8} {'median ms':>10} {'max ms':>8}"]
    for name, c in (("injections", inj), ("benign", ben)):
        counts = f"{c['messages']:>8} {c['blocked']:>8} {c['flagged']:>8} {c['passed']:>8}"
        rows.append(f"{name:<12} {counts} {c['median_ms']:>10.2f} {c['max_ms']:>8.2f}")
    rows += [
        "",
        f"detection (blocked or flagged) on injections: {rates['detection']:.1%}  ({inj['blocked'] + inj['flagged']}/{inj['messages']})",
        f"block rate on injections:                     {rates['block_on_injections']:.1%}  ({inj['blocked']}/{inj['messages']})",
        f"false-block rate on benign:                   {rates['false_block_on_benign']:.1%}  ({ben['blocked']}/{ben['messages']})",
        f"false-flag rate on benign:                    {rates['false_flag_on_benign']:.1%}  ({ben['flagged']}/{ben['messages']})",
        "",
        f"{'tripwire':<22} {'injections':>10} {'benign':>8}   (messages in which it fired)",
    ]
    for kind in sorted({*inj["tripwires"], *ben["tripwires"]}):
        rows.append(f"{kind:<22} {inj['tripwires'].get(kind, 0):>10} {ben['tripwires'].get(kind, 0):>8}")
    return "\n".join(rows)


def bench(args: argparse.Namespace) -> int:
    report = run(load_corpus(Path(args.injections)), load_corpus(Path(args.benign)))
    print(f"guard bench: {report['profile']} input guard, policy {report['policy_version']}")
    print(table(report))
    if args.verbose:
        for name, want in (("injections", "passed"), ("benign", None)):
            for o in report["corpora"][name]["outcomes"]:
                if (want and o["outcome"] == want) or (not want and o["outcome"] != "passed"):
                    print(f"{name} {o['outcome']}: {', '.join(o['tripwires']) or '-'}: {o['text'][:100]!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guard-bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out / 'guard-bench.json'}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench-out", help="folder for guard-bench.json (default bench-out/)")
    p.add_argument("--injections", default=str(CORPORA / "injections.txt"), help="one injection a line")
    p.add_argument("--benign", default=str(CORPORA / "benign_support.txt"), help="one ordinary message a line")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the injections that passed and the benign messages that did not")
