"""`tandem staff add | list | remove`: the people who answer visitors in /console."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_site import site_or_error
from .staff import StaffDirectory, StaffError
from .store import Store


def add(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        sites = ["*"] if args.all_sites else args.site
        for key in sites:
            if key != "*" and not await site_or_error(store, key):
                return 2
        try:
            member, token = await StaffDirectory(store.engine).add(args.name, sites)
        except StaffError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"added {member.name} for {'every site' if '*' in member.sites else ', '.join(member.sites)}")
        print(f"token: {token}")
        print("(shown once: they sign in to /console with it; only its hash is kept)")
        return 0

    return int(run(args, work))


def listing(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        for member, added in await StaffDirectory(store.engine).members():
            print(f"{member.name:<30} {', '.join(member.sites):<40} added {added}")
        return 0

    return int(run(args, work))


def remove(args: argparse.Namespace, run: Any) -> int:
    async def work(store: Store) -> int:
        if await StaffDirectory(store.engine).remove(args.name):
            print(f"removed {args.name}: their token no longer signs in")
            return 0
        print(f"error: no staff member named {args.name!r}", file=sys.stderr)
        return 1

    return int(run(args, work))


def add_parsers(sub: Any, common: Any, run: Any) -> None:
    staff = sub.add_parser("staff", help="the people who answer visitors in /console").add_subparsers(dest="staff_command", required=True)
    p = staff.add_parser("add", help="add a staff member and print their token (once)")
    common(p)
    p.add_argument("name", help="shown to visitors above their messages")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--site", action="append", default=[], help="a site they answer (repeatable)")
    which.add_argument("--all-sites", action="store_true")
    p.set_defaults(func=lambda a: add(a, run))
    p = staff.add_parser("list", help="staff members and their sites")
    common(p)
    p.set_defaults(func=lambda a: listing(a, run))
    p = staff.add_parser("remove", help="remove a staff member: their token stops working")
    common(p)
    p.add_argument("name")
    p.set_defaults(func=lambda a: remove(a, run))
