"""`tandem sites add | edit | show | list`, `tandem conversations list | show | export` and
`tandem staff add | list | remove`: for the people who run the chat."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from server.settings import environment, tandem_home

from . import staff_cli as staff
from . import webhooks_cli as webhooks
from .identity import Contact, new_secret
from .knowledge import cli as knowledge
from .store import Site, Store
from .transcript import as_text, transcript
from .widget_settings import LOCALES, POSITIONS, THEMES, SettingsError, WidgetSettings

DEFAULT_PROMPT = "You are a helpful, concise customer-support assistant."


def _db(args: argparse.Namespace) -> Path | str:
    """The store the server uses: its PostgreSQL URL, or the SQLite file in its dialog folder."""
    return (
        args.database_url
        or environment().database_url
        or (Path(args.dialog_dir) if args.dialog_dir else tandem_home() / "dialog") / "chat.db"
    )


def _run(args: argparse.Namespace, work: Any) -> int:
    async def main() -> int:
        store = await Store.open(_db(args))
        try:
            return int(await work(store))
        finally:
            await store.close()

    return asyncio.run(main())


WIDGET_OPTIONS = ("title", "greeting", "accent", "theme", "position", "locale", "hours", "timezone", "away_message", "bot_when_away")


def _settled(args: argparse.Namespace, site: Site | None) -> Site:
    """The site as the command leaves it: what it gives, over what the site had."""
    prompt = Path(args.system_prompt_file).read_text() if args.system_prompt_file else args.system_prompt
    widget = (site.widget if site else WidgetSettings()).changed(**{k: getattr(args, k) for k in WIDGET_OPTIONS})
    secret = site.identity_secret if site else None
    if args.identity_validation is False:
        secret = None
    elif (args.identity_validation and secret is None) or args.rotate_identity_secret:
        secret = new_secret()
    return Site(
        args.site_key,
        args.name or (site.name if site else args.site_key),
        tuple(args.origin) if args.origin else (site.allowed_origins if site else ()),
        prompt if prompt is not None else (site.system_prompt if site else DEFAULT_PROMPT),
        widget,
        secret,
        args.retrieval or (site.retrieval if site else "hybrid"),
    )


def _save(args: argparse.Namespace, must_exist: bool) -> int:
    async def work(store: Store) -> int:
        old = await store.site(args.site_key)
        if must_exist and old is None:
            print(f"error: no site {args.site_key!r} (tandem sites add {args.site_key} --origin …)", file=sys.stderr)
            return 1
        try:
            site = _settled(args, old)
        except SettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not site.allowed_origins:
            print("error: give at least one --origin (e.g. https://www.example.com)", file=sys.stderr)
            return 2
        await store.put_site(site)
        print(f"site {site.site_key!r}: origins {', '.join(site.allowed_origins)}")
        if site.identity_secret and site.identity_secret != (old.identity_secret if old else None):
            print(f"identity secret (keep it on your server; sign each customer's id or email with it): {site.identity_secret}")
        if old is None:
            print(f'embed: <script src="https://YOUR-TANDEM-HOST/widget.js" data-site-key="{site.site_key}" defer></script>')
        return 0

    return _run(args, work)


def sites_add(args: argparse.Namespace) -> int:
    return _save(args, must_exist=False)


def sites_edit(args: argparse.Namespace) -> int:
    return _save(args, must_exist=True)


def sites_show(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        site = await store.site(args.site_key)
        if site is None:
            print(f"error: no site {args.site_key!r}", file=sys.stderr)
            return 1
        w = site.widget
        rows = {
            "name": site.name,
            "origins": ", ".join(site.allowed_origins),
            "system prompt": site.system_prompt,
            "title": w.title or "(Support, in the visitor's language)",
            "greeting": w.greeting or "(none)",
            "accent": w.accent,
            "theme": w.theme,
            "position": w.position,
            "locale": w.locale,
            "hours": f"{w.business_hours()} ({w.timezone})",
            "away message": w.away_message or "(says when a person answers)",
            "bot when away": "yes" if w.bot_when_away else "no: messages wait for a person",
            "identity validation": "on" if site.identity_secret else "off",
            "retrieval": site.retrieval + (" (BM25 and the embedding model)" if site.retrieval == "hybrid" else " (BM25 alone)"),
        }
        if args.identity_secret and site.identity_secret:
            rows["identity secret"] = site.identity_secret
        for k, v in rows.items():
            print(f"{k + ':':<21}{v}")
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
            contact = Contact.from_json(c.get("contact"))
            who = f"  customer {contact.email or contact.customer_id or contact.name}" if contact else ""
            state = c["status"] + (f" ({c['agent']})" if c["agent"] else "")
            print(
                f"{c['id']:<22} {c['site_key']:<12} {c['updated_at']}  {c['messages']:>3} messages  {state:<16}"
                f" visitor {c['visitor_id']}{who}"
            )
        return 0

    return _run(args, work)


def conversations_show(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        dump = await transcript(store, args.conversation_id)
        if dump is None:
            print(f"error: no conversation {args.conversation_id!r}", file=sys.stderr)
            return 1
        sys.stdout.write(as_text(dump))
        return 0

    return _run(args, work)


def conversations_export(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        ids = [args.conversation_id] if args.conversation_id else [c["id"] for c in await store.list_conversations(args.site, 10**9)]
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
        try:
            for cid in ids:
                dump = await transcript(store, cid)
                if dump is not None:
                    out.write(as_text(dump) + "\n" if args.format == "text" else json.dumps(dump, ensure_ascii=False) + "\n")
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
        p.add_argument(
            "--database-url", default=None, help="the chat store on PostgreSQL (or TANDEM_DATABASE_URL), as `tandem serve` was given it"
        )

    def site_options(p: argparse.ArgumentParser, adding: bool) -> None:
        common(p)
        p.add_argument("site_key")
        p.add_argument("--name")
        p.add_argument(
            "--origin",
            action="append",
            default=[],
            help="an allowed page origin, e.g. https://www.example.com (repeatable; scheme://host:* for any port)"
            + ("" if adding else "; given, replaces the list"),
        )
        p.add_argument("--system-prompt", default=DEFAULT_PROMPT if adding else None)
        p.add_argument("--system-prompt-file")
        look = p.add_argument_group("the widget (shown to visitors)")
        look.add_argument("--title", help="the chat's title (default: 'Support' in the visitor's language)")
        look.add_argument("--greeting", help="the first message a new conversation shows")
        look.add_argument("--accent", help="the accent colour, #rrggbb (text on it is chosen for contrast)")
        look.add_argument("--theme", choices=THEMES, help="auto follows the visitor's prefers-color-scheme")
        look.add_argument("--position", choices=POSITIONS)
        look.add_argument("--locale", choices=("auto", *LOCALES), help="auto: the visitor's browser language")
        look.add_argument("--hours", help="business hours, e.g. 'Mon-Fri 09:00-17:00; Sat 10:00-14:00' ('' : always open)")
        look.add_argument("--timezone", help="the hours' IANA time zone, e.g. Europe/Berlin")
        look.add_argument("--away-message", help="shown outside the hours (default: when a person will answer)")
        look.add_argument(
            "--bot-when-away",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="outside the hours, the bot answers (default) or not",
        )
        who = p.add_argument_group("identified customers (window.Tandem.identify)")
        who.add_argument(
            "--identity-validation",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="require a customer's id or email signed with the site's secret (printed once when made)",
        )
        who.add_argument("--rotate-identity-secret", action="store_true", help="a new identity secret (the old one stops working)")
        p.add_argument(
            "--retrieval",
            choices=("hybrid", "bm25"),
            help="how the knowledge base is searched: hybrid (BM25 and the embedding model, the default) or BM25 alone",
        )

    sites = sub.add_parser("sites", help="sites that embed the chat widget").add_subparsers(dest="sites_command", required=True)
    p = sites.add_parser("add", help="add a site, or update it (what is given replaces what it had)")
    site_options(p, adding=True)
    p.set_defaults(func=sites_add)
    p = sites.add_parser("edit", help="change what is given of a site, keep the rest")
    site_options(p, adding=False)
    p.set_defaults(func=sites_edit)
    p = sites.add_parser("show", help="one site's settings")
    common(p)
    p.add_argument("site_key")
    p.add_argument("--identity-secret", action="store_true", help="print the identity secret too")
    p.set_defaults(func=sites_show)
    p = sites.add_parser("list", help="the sites")
    common(p)
    p.set_defaults(func=sites_list)

    knowledge.add_parsers(sub, common, _run)

    staff.add_parsers(sub, common, _run)
    webhooks.add_parsers(sub, common, _run)

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
    p = convs.add_parser("export", help="transcripts: JSON Lines, one conversation per line, or plain text")
    common(p)
    p.add_argument("conversation_id", nargs="?")
    p.add_argument("--format", choices=("json", "text"), default="json")
    p.add_argument("--site")
    p.add_argument("--out")
    p.set_defaults(func=conversations_export)
