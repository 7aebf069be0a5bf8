"""`tandem sites add | list` and `tandem conversations list | show | export`: for the people who run the chat."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from server.settings import tandem_home

from .store import Site, Store


def _db(args: argparse.Namespace) -> Path:
    return (Path(args.dialog_dir) if args.dialog_dir else tandem_home() / "dialog") / "chat.db"


def _run(args: argparse.Namespace, work: Any) -> int:
    async def main() -> int:
        store = await Store.open(_db(args))
        try:
            return int(await work(store))
        finally:
            await store.close()

    return asyncio.run(main())


def sites_add(args: argparse.Namespace) -> int:
    if not args.origin:
        print("error: give at least one --origin (e.g. https://www.example.com)", file=sys.stderr)
        return 2
    prompt = Path(args.system_prompt_file).read_text() if args.system_prompt_file else args.system_prompt

    async def work(store: Store) -> int:
        await store.put_site(Site(args.site_key, args.name or args.site_key, tuple(args.origin), prompt))
        print(f"site {args.site_key!r}: origins {', '.join(args.origin)}")
        print(f'embed: <script src="https://YOUR-TANDEM-HOST/widget.js" data-site-key="{args.site_key}" defer></script>')
        return 0

    return _run(args, work)


def sites_list(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        for site in await store.list_sites():
            prompt = site.system_prompt.replace("\n", " ")
            print(f"{site.site_key:<16} {site.name:<24} {', '.join(site.allowed_origins):<40} {prompt[:60]}")
        return 0

    return _run(args, work)


def conversations_list(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        for c in await store.list_conversations(args.site, args.limit):
            print(f"{c['id']:<22} {c['site_key']:<12} {c['updated_at']}  {c['messages']:>3} messages  visitor {c['visitor_id']}")
        return 0

    return _run(args, work)


async def _dump(store: Store, cid: str) -> dict[str, Any] | None:
    conv = await store.conversation(cid)
    if conv is None:
        return None
    msgs = [
        {
            "message_id": m.id,
            "role": m.role,
            "status": m.status,
            "finish_reason": m.finish_reason,
            "created_at": m.created_at,
            "text": m.text,
        }
        for m in await store.messages(cid)
    ]
    return {**conv, "messages": msgs}


def conversations_show(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        dump = await _dump(store, args.conversation_id)
        if dump is None:
            print(f"error: no conversation {args.conversation_id!r}", file=sys.stderr)
            return 1
        print(f"conversation {dump['id']} on {dump['site_key']}, visitor {dump['visitor_id']}, started {dump['created_at']}")
        for m in dump["messages"]:
            flag = "" if m["status"] == "done" else f" [{m['status']}]"
            print(f"\n{m['role']} ({m['created_at']}){flag}:\n{m['text']}")
        return 0

    return _run(args, work)


def conversations_export(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        ids = [args.conversation_id] if args.conversation_id else [c["id"] for c in await store.list_conversations(args.site, 10**9)]
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
        try:
            for cid in ids:
                dump = await _dump(store, cid)
                if dump is not None:
                    out.write(json.dumps(dump, ensure_ascii=False) + "\n")
        finally:
            if args.out:
                out.close()
        if args.out:
            print(f"wrote {len(ids)} conversations to {args.out}", file=sys.stderr)
        return 0

    return _run(args, work)


def add_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dialog-dir", default=None, help="default: $TANDEM_HOME/dialog")

    sites = sub.add_parser("sites", help="sites that embed the chat widget").add_subparsers(dest="sites_command", required=True)
    p = sites.add_parser("add", help="add or update a site (its key, allowed origins and system prompt)")
    common(p)
    p.add_argument("site_key")
    p.add_argument("--name")
    p.add_argument(
        "--origin",
        action="append",
        default=[],
        help="an allowed page origin, e.g. https://www.example.com (repeatable; scheme://host:* for any port)",
    )
    p.add_argument("--system-prompt", default="You are a helpful, concise customer-support assistant.")
    p.add_argument("--system-prompt-file")
    p.set_defaults(func=sites_add)
    p = sites.add_parser("list", help="the sites")
    common(p)
    p.set_defaults(func=sites_list)

    convs = sub.add_parser("conversations", help="read support conversations").add_subparsers(dest="conversations_command", required=True)
    p = convs.add_parser("list", help="newest first")
    common(p)
    p.add_argument("--site")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=conversations_list)
    p = convs.add_parser("show", help="one conversation as text")
    common(p)
    p.add_argument("conversation_id")
    p.set_defaults(func=conversations_show)
    p = convs.add_parser("export", help="JSON Lines, one conversation per line")
    common(p)
    p.add_argument("conversation_id", nargs="?")
    p.add_argument("--site")
    p.add_argument("--out")
    p.set_defaults(func=conversations_export)
