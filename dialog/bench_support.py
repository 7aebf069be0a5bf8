"""`tandem bench-support`: does the support bot state the company's facts, and say so when it does
not know? An invented company's documents (dialog/bench_data/support: several formats, facts
nobody else has) and questions phrased unlike them, some with no answer in the documents, asked
over the real WebSocket of a real `tandem serve` on the default model, one fresh conversation
each, once per mode: `none` (the site's system prompt alone), `bm25` (the knowledge base, BM25
retrieval) and `hybrid` (BM25 and the embedding model's vectors, fused). Modes rotate which goes
first, question by question. A benchmark, not a test:
it prints a table and writes JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "bench_data" / "support"
MODES = ("none", "bm25", "hybrid")
# an honest answer: says it does not know, and offers a person
DOES_NOT_KNOW = re.compile(
    r"(don'?t|do not|doesn'?t|does not) (know|have (that|this|any|the|specific|information|details))|not sure|no information|"
    r"(couldn'?t|could not|can'?t|cannot|unable to|wasn'?t able to|not able to) (find|answer|help with|say|confirm|provide)|"
    r"not (in|covered|mentioned|listed|available) (in )?(our|the|my)|I don'?t see",
    re.I,
)
OFFERS_PERSON = re.compile(r"\b(person|human|agent|colleague|team|staff|someone|representative|contact (us|our|the))\b", re.I)


def _ask(url: str, site: str, question: str, timeout: float) -> dict[str, Any]:
    """One fresh conversation, one question: the answer's text, sources and time."""
    from websockets.sync.client import connect

    ws_url = url.replace("http://", "ws://") + f"/v1/dialog?site_key={site}"
    started = time.perf_counter()
    with connect(ws_url, additional_headers={"Origin": url}, open_timeout=10, max_size=2**22) as ws:
        ws.send(json.dumps({"type": "hello", "v": 1, "site_key": site}))
        json.loads(ws.recv(timeout=30))
        ws.send(json.dumps({"type": "message", "client_msg_id": uuid.uuid4().hex, "text": question}))
        parts: list[str] = []
        while True:
            frame = json.loads(ws.recv(timeout=timeout))
            if frame["type"] == "delta":
                parts.append(frame["text"])
            elif frame["type"] == "done":
                return {
                    "text": "".join(parts),
                    "finish": frame["finish_reason"],
                    "sources": frame.get("sources", []),
                    "seconds": time.perf_counter() - started,
                }
            elif frame["type"] == "error":
                return {"text": "", "finish": "error:" + frame.get("code", ""), "sources": [], "seconds": time.perf_counter() - started}


def _setup_sites(dialog_dir: Path, url: str, company: str, docs: list[Path]) -> None:
    from .knowledge.embeddings import default_embedder
    from .knowledge.index import KnowledgeBase
    from .store import Site, Store

    async def go() -> None:
        store = await Store.open(dialog_dir / "chat.db")
        prompt = f"You are the customer-support assistant of {company}. Answer the customer's question briefly and politely."
        for mode in MODES:
            await store.put_site(Site(f"bench-{mode}", f"bench {mode}", (url,), prompt, retrieval="bm25" if mode == "bm25" else "hybrid"))
        kb = KnowledgeBase(store.engine, default_embedder())
        for mode in MODES[1:]:
            for path in docs:
                await kb.add(f"bench-{mode}", path)
            await kb.prepare(f"bench-{mode}")
        await store.close()

    asyncio.run(go())


def score(question: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    text = answer["text"]
    says_unknown = bool(DOES_NOT_KNOW.search(text))
    row = {"q": question["q"], "answerable": question["answerable"], **answer, "says_unknown": says_unknown}
    if question["answerable"]:
        row["right"] = any(re.search(p, text, re.I) for p in question["expect"])
    else:
        row["honest"] = says_unknown
        row["honest_with_person"] = says_unknown and bool(OFFERS_PERSON.search(text))
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]

    def share(items: list[dict[str, Any]], key: str) -> float | None:
        return round(sum(bool(r[key]) for r in items) / len(items), 3) if items else None

    return {
        "right": share(answerable, "right"),
        "unknown_when_answerable": share(answerable, "says_unknown"),
        "honest": share(unanswerable, "honest"),
        "honest_with_person": share(unanswerable, "honest_with_person"),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "median_seconds": round(statistics.median(r["seconds"] for r in rows), 2) if rows else None,
        "with_sources": share(rows, "sources"),
    }


def run(args: argparse.Namespace) -> int:
    data = json.loads((DATA / "questions.json").read_text())
    questions = data["questions"][: args.limit] if args.limit else data["questions"]
    docs = sorted((DATA / "docs").iterdir())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-support-"))
    from lsp.bench_typing import start_server  # (the benchmarks' one way to start and wait for tandem serve)

    from .knowledge.embeddings import default_embedder

    if "hybrid" in args.modes and default_embedder() is None:
        print("warning: the embedding model is not installed: hybrid is BM25 alone (make test or make run installs it)", file=sys.stderr)
    served = start_server(work, compile_wait=0 if args.no_compile else args.compile_wait)
    url = served.url
    modes = tuple(m for m in MODES if m in args.modes.split(","))
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        _setup_sites(work / f"dialog-{url.rsplit(':', 1)[1]}", url, data["company"], docs)
        for i, q in enumerate(questions):
            order = modes[i % len(modes) :] + modes[: i % len(modes)]
            for mode in order:
                rows[mode].append(score(q, _ask(url, f"bench-{mode}", q["q"], args.timeout)))
            if args.verbose:
                print(
                    f"[{i + 1}/{len(questions)}] {q['q']}\n  " + "\n  ".join(f"{m}: {rows[m][-1]['text'][:160]!r}" for m in modes),
                    file=sys.stderr,
                )
    finally:
        served.stop()
    summary = {m: summarise(rows[m]) for m in modes}
    print(f"support answers on {data['company']}'s documents ({len(docs)} files), default model, {len(questions)} questions")
    print(f"{'mode':<8} {'right':>7} {'honest':>8} {'+person':>8} {'unknown*':>9} {'sources':>8} {'median s':>9}")
    for m in modes:
        s = summary[m]
        pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        print(
            f"{m:<8} {pct(s['right']):>7} {pct(s['honest']):>8} {pct(s['honest_with_person']):>8} {pct(s['unknown_when_answerable']):>9} "
            f"{pct(s['with_sources']):>8} {s['median_seconds']:>9}"
        )
    print(
        "right: answerable questions whose answer states the fact; honest: unanswerable ones answered 'I do not know' "
        "(+person: and offering a person); unknown*: answerable ones answered 'I do not know'"
    )
    result = {
        "company": data["company"],
        "questions": len(questions),
        "documents": [d.name for d in docs],
        "summary": summary,
        "rows": rows,
    }
    path = out_dir / "support.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"wrote {path}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench-support", help="support answers: facts stated and honest 'I don't know', with and without the knowledge base")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--modes", default=",".join(MODES), help=f"which of {', '.join(MODES)} to run (comma-separated)")
    p.add_argument("--timeout", type=float, default=180, help="seconds per answer")
    p.add_argument("--no-compile", action="store_true", help="run the server eager")
    p.add_argument("--compile-wait", type=float, default=240, help="seconds to wait for the server's compiled decode step")
    p.add_argument("--verbose", action="store_true", help="each question's answers as they come")
    p.add_argument("--out", default="bench-out")
    p.set_defaults(func=run, log_level="warning")
