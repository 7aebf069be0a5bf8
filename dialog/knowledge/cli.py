"""`tandem knowledge add | list | remove | reindex | search`: a site's knowledge base, for the
people who run the chat."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..cli_site import site_or_error
from ..store import Store
from .documents import FORMATS, DocumentError
from .embeddings import default_embedder
from .index import KnowledgeBase


def files(paths: list[str]) -> list[tuple[Path, str]]:
    """Each file given, and each readable file under each folder given, with the name it is kept
    under: a file's own name, or its path from the folder's parent (`docs/returns.md`)."""
    out: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS)
            out += [(p, p.relative_to(given.parent).as_posix()) for p in found]
        else:
            out.append((given, given.name))
    return out


def add(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if not await site_or_error(store, args.site_key):
            return 1
        todo = files(args.paths)
        missing = [str(p) for p, _ in todo if not p.is_file()]
        if missing:
            print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
            return 2
        kb, failed, passages = KnowledgeBase(store.engine, default_embedder()), 0, 0
        for path, source in tqdm(todo, desc="reading", unit="file", file=sys.stderr, disable=len(todo) < 2):
            try:
                added = await kb.add(args.site_key, path, source)
            except DocumentError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
                failed += 1
                continue
            passages += added.passages
            state = "unchanged" if added.unchanged else f"{added.passages} passage{'' if added.passages == 1 else 's'}"
            red = f", {added.redactions} secrets redacted" if added.redactions else ""
            tqdm.write(f"{added.source}: {state}{red}")
        await kb.prepare(args.site_key)  # the passages' vectors made now, not at the first visitor's question
        print(f"{len(todo) - failed} documents, {passages} passages in {args.site_key!r}'s knowledge base")
        return 1 if failed else 0

    return int(run(args, work))


def listing(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if not await site_or_error(store, args.site_key):
            return 1
        for d in await KnowledgeBase(store.engine).documents(args.site_key):
            red = f"  {d['redactions']} redacted" if d["redactions"] else ""
            print(f"{d['source']:<40} {d['format']:<9} {d['passages']:>4} passages  {d['added_at']}  {d['title']}{red}")
        return 0

    return int(run(args, work))


def remove(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        kb, missing = KnowledgeBase(store.engine), 0
        for source in args.sources:
            if await kb.remove(args.site_key, source):
                print(f"removed {source}")
            else:
                print(f"error: {args.site_key!r} has no document {source!r} (tandem knowledge list {args.site_key})", file=sys.stderr)
                missing += 1
        return 1 if missing else 0

    return int(run(args, work))


def reindex(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if not await site_or_error(store, args.site_key):
            return 1
        kb = KnowledgeBase(store.engine, default_embedder())
        count = await kb.reindex(args.site_key)
        await kb.prepare(args.site_key)
        print(f"{count} passages indexed")
        return 0

    return int(run(args, work))


def search(args: argparse.Namespace, run: Any) -> int:
    """What the bot would find for a question: to check a knowledge base before visitors do."""

    async def work(store: Store) -> int:
        if not await site_or_error(store, args.site_key):
            return 1
        site = await store.site(args.site_key)
        kb = KnowledgeBase(store.engine, default_embedder())
        for hit in await kb.search(args.site_key, args.query, args.limit, dense=site is not None and site.retrieval != "bm25"):
            similarity = f" cosine {hit.similarity:.2f}" if hit.similarity is not None else ""
            print(f"[bm25 {hit.score:.2f}{similarity}] {hit.source} — {hit.heading or hit.title}\n{hit.text}\n")
        return 0

    return int(run(args, work))


def add_parsers(sub: Any, common: Any, run: Any) -> None:
    kb = sub.add_parser("knowledge", help="a site's knowledge base, which the bot answers from").add_subparsers(
        dest="knowledge_command", required=True
    )

    def command(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        """Every knowledge command names a site and runs on the chat store."""
        p = kb.add_parser(name, help=help)
        common(p)
        p.add_argument("site_key")
        p.set_defaults(func=lambda a: func(a, run))
        return p

    command("add", "add or replace documents: Markdown, HTML, text or PDF files, or folders of them", add).add_argument("paths", nargs="+")
    command("list", "a site's documents", listing)
    command("remove", "remove documents by the name they were added under", remove).add_argument("sources", nargs="+")
    command("reindex", "split and index the stored documents again (no files needed)", reindex)
    p = command("search", "the passages the bot would find for a question", search)
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=4)
