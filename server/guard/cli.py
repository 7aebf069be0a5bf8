"""`tandem guard scan FILE...`: what the input guard would do to files, for tuning and for
measuring false positives (the README quotes its numbers on the standard library).
`tandem guard bench`: the injection tripwires measured on known attacks and ordinary questions."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .sanitize import PROFILES, InputGuard, Segment


def scan(args: argparse.Namespace) -> int:
    guard = InputGuard(PROFILES[args.profile])
    files = hits = findings = 0
    total_bytes, total_s = 0, 0.0
    for name in args.files:
        path = Path(name)
        text = path.read_text(encoding="utf-8", errors="replace")
        role = "code" if args.profile == "ide_completion" else "user"
        start = time.perf_counter()
        result = guard.scan([Segment(role, text)])
        total_s += time.perf_counter() - start
        files, total_bytes = files + 1, total_bytes + len(text.encode())
        found = [(r.scanner, f) for r in result.results for f in r.findings if r.scanner in args.scanners]
        if found:
            hits, findings = hits + 1, findings + len(found)
            for scanner, f in found:
                line = text.count("\n", 0, f.start) + 1
                print(f"{path}:{line}: {scanner} {f.type}")
    rate = hits / files if files else 0.0
    print(
        f"{files} files, {total_bytes / 1e6:.2f} MB: {hits} with findings ({rate:.1%}), {findings} findings; "
        f"scanned in {total_s * 1000:.0f} ms ({total_s * 1000 / max(total_bytes / 1024, 1e-9):.2f} ms per KiB)"
    )
    return 0


def add_parser(sub: Any) -> None:
    guard = sub.add_parser("guard", help="inspect the guard")
    guard_sub = guard.add_subparsers(dest="guard_command", required=True)
    p = guard_sub.add_parser("scan", help="run the input guard over files and list what it finds")
    p.add_argument("files", nargs="+")
    p.add_argument("--profile", choices=sorted(PROFILES), default="ide_completion")
    p.add_argument("--scanners", default="secrets,pii,unicode,injection,template_tokens", type=lambda s: set(s.split(",")))
    p.set_defaults(func=scan)
    from . import bench

    b = guard_sub.add_parser("bench", help="measure the injection tripwires on known injections and ordinary support questions")
    bench.add_arguments(b)
    b.set_defaults(func=bench.bench)
