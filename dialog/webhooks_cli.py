"""`tandem webhooks add | list | remove | deliveries | redeliver`: a site's signed webhooks (its
helpdesk hears of every conversation), and their delivery log, for the people who run the chat."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .cli_site import site_or_error
from .store import Store
from .webhooks import EVENTS, STATUSES, Webhooks, subscribed


def add(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if not await site_or_error(store, args.site_key):
            return 2
        try:
            hook_id, secret = await Webhooks(store.engine).add(args.site_key, args.url, args.event or None)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"webhook {hook_id}: {args.url} ({subscribed(args.event or ['*'])})")
        print(f"secret: {secret}")
        print("(shown once: it signs what Tandem sends, and what the helpdesk posts back; keep it on the receiving server)")
        return 0

    return int(run(args, work))


def listing(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if not await site_or_error(store, args.site_key):
            return 1
        for hook in await Webhooks(store.engine).hooks(args.site_key):
            print(f"{hook['id']}  {hook['url']}  {subscribed(hook['events'])}  added {hook['created_at']}")
        return 0

    return int(run(args, work))


def remove(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if await Webhooks(store.engine).remove(args.webhook_id):
            print(f"removed {args.webhook_id}")
            return 0
        print(f"error: no webhook {args.webhook_id!r} (tandem webhooks list SITE_KEY)", file=sys.stderr)
        return 1

    return int(run(args, work))


def _state(d: dict[str, Any]) -> str:
    if d["status"] == "delivered":
        return f"delivered {d['delivered_at']}"
    why = f" ({d['last_error']})" if d["last_error"] else ""
    if d["status"] == "failed":
        return f"failed{why}"
    wait = d["next_attempt_at"] - time.time()
    return f"pending, next try {'now' if wait <= 0 else f'in {wait:.0f} s'}{why}"


def deliveries(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if not await site_or_error(store, args.site_key):
            return 1
        rows = await Webhooks(store.engine).deliveries(args.site_key, args.status, args.limit)
        if rows:
            print(f"{'DELIVERY':<41} {'EVENT':<24} {'TRIES':>5} {'CODE':>4}  {'CREATED':<24}  STATE, URL")
        for d in rows:
            code = d["last_code"] if d["last_code"] is not None else "-"
            print(f"{d['id']:<41} {d['event']:<24} {d['attempts']:>5} {code:>4}  {d['created_at']:<24}  {_state(d)}, {d['url']}")
        return 0

    return int(run(args, work))


def redeliver(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if await Webhooks(store.engine).redeliver(args.delivery_id):
            print(f"{args.delivery_id}: pending again (the server sends it within seconds)")
            return 0
        print(f"error: no failed delivery {args.delivery_id!r} (tandem webhooks deliveries SITE_KEY --status failed)", file=sys.stderr)
        return 1

    return int(run(args, work))


def add_parsers(sub: Any, common: Any, run: Any) -> None:
    hooks = sub.add_parser("webhooks", help="signed webhooks: a helpdesk hears of every support conversation").add_subparsers(
        dest="webhooks_command", required=True
    )

    def command(name: str, help: str, func: Any, *positional: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = hooks.add_parser(name, help=help)
        common(p)
        for arg in positional:
            p.add_argument(arg)
        p.set_defaults(func=lambda a: func(a, run))
        return p

    p = command("add", "add a webhook to a site (its secret is printed once)", add, "site_key", "url")
    p.add_argument("--event", action="append", choices=EVENTS, help="an event to send (repeat it; default: all of them)")
    command("list", "a site's webhooks", listing, "site_key")
    command("remove", "remove a webhook and its delivery log", remove, "webhook_id")
    p = command("deliveries", "a site's deliveries, newest first", deliveries, "site_key")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--limit", type=int, default=50)
    command("redeliver", "send a failed delivery again", redeliver, "delivery_id")
